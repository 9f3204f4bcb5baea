r"""Part segmentation on ShapeNetPart (SPEC §8): Point-MAE's segmentation network, with DAPT.

Variants:
  dapt       (default) DAPT inside the frozen backbone (scale-shifts, dynamic adapters of rank 32,
             internal prompts, a class token) plus the whole segmentation head:
             5,665,342 of 27,490,366 parameters train. The project's design (SPEC §8.6): the DAPT
             release ships no segmentation code. The DAPT paper's segmentation figures are
             UNVERIFIED (not found in any public source), so no target is quoted.
  full       the same model, every parameter trains (27,490,366).
  pointmae   Point-MAE's own segmentation network (no DAPT, position before every block), full
             fine-tuning, 27,063,730 parameters; its fine-tuned checkpoints convert into it.
             Point-MAE reports 86.1 % instance mIoU (its README); the class mIoU 84.2 % is from
             its paper and UNVERIFIED here.
  synthetic  the embedded demo: a small model on the generated `synthetic_parts` objects
             (8 categories, 22 parts), no files and no checkpoint, a few minutes on 2 CPU cores.

Recipe (Point-MAE's segmentation/main.py, SPEC §8.3): AdamW lr 2e-4, weight decay 0.05, cosine
with 10 warm-up epochs from 1e-6 (floor 1e-6) stepped per epoch, batch 16, gradient clipping at
10, 2,048 points per shape drawn with replacement, isotropic scale U(0.8, 1.25) and shift
U(-0.1, 0.1) in training, train+val for training and test for evaluation. Two deviations:
  - the shared loop runs epochs 0..num_epochs (301 passes; the reference 300): one more epoch at
    the end of the cosine (learning rate ~1e-6);
  - Point-MAE steps AdamW twice per batch with the same gradient (first unclipped, then clipped);
    this is not reproduced (one clipped step per batch), since the optimizer is the shared loop's.

Commands:
  python -m convert pretrain.pth ckpts/pointmae --config configs/shapenetpart.py
  python main.py --config=configs/shapenetpart.py --workdir=runs/partseg \
      --config.init_from=ckpts/pointmae \
      --config.data.data_dir=data/shapenetcore_partanno_segmentation_benchmark_v0_normal
  python main.py --config=configs/shapenetpart.py --workdir=runs/partseg --mode=eval
  python main.py --config=configs/shapenetpart.py --workdir=runs/partseg --mode=predict \
      --input=chair.ply --category=Chair
  python main.py --config=configs/shapenetpart.py:synthetic --workdir=runs/partseg_demo

`model.peft` picks the PEFT method as in classification (`--config.model.peft=lora`, or the sweep's
`--methods=`); what trains is the method's set plus the whole segmentation head. The model
section keeps the classifier's `head_tokens` (segmentation ignores it). `model.num_classes` is the number of object
categories (the one-hot the head is conditioned on).
"""
from configs import common

VARIANTS = ('dapt', 'full', 'pointmae', 'synthetic')


def get_config(arg=None):
  variant = arg or 'dapt'
  if variant not in VARIANTS:
    raise ValueError(f'configs/shapenetpart.py: unknown variant {variant!r}; choose one of '
                     f'{", ".join(VARIANTS)}')
  c = common.base_config()
  c.task = 'segmentation'
  m = c.model
  m.num_classes = 16              # object categories (one-hot into label_conv)
  m.num_parts = 50                # part ids (per-point outputs)
  m.rank = 32                     # Dynamic Adapter bottleneck r (SPEC §8.6: the rank is UNVERIFIED)
  m.drop_path_rate = 0.1          # Point-MAE's segmentation value
  m.drop_adapter_rate = 0.0       # dropout inside the adapter
  m.peft = 'dapt'                 # any PEFT method (dapt_jax/models/peft); 'full': Point-MAE's own
  m.pos_every_block = False       # DAPT adds the position once; True: before every block
  m.feature_blocks = (3, 7, 11)   # blocks whose outputs (last G tokens, final norm) feed the head
  m.label_dims = 64               # width of the category embedding (label_conv)
  m.propagation_dims = (1536, 1024)  # feature-propagation MLP widths
  m.head_dims = (512, 256)        # per-point head widths before the part logits
  m.head_dropout_rate = 0.5       # dropout after the head's first layer

  c.data.name = 'shapenet_part'
  c.data.data_dir = 'data/shapenetcore_partanno_segmentation_benchmark_v0_normal'
  c.data.num_points = 2048        # points per shape fed to the model (drawn with replacement)
  c.data.point_all = 2048         # unused by segmentation (no FPS pool); kept >= num_points
  c.data.pool_points = 4096       # every stored shape padded (or cut) to this many points
  c.data.synthetic_num_categories = 8  # synthetic_parts: object categories (2..8)
  c.data.train_split = 'train+val'
  c.data.eval_split = 'test'

  c.optim.lr = 2e-4
  c.optim.weight_decay = 0.05
  c.optim.clip_grad_norm = 10.0
  c.optim.warmup_epochs = 10
  c.num_epochs = 300
  c.batch_size = 16
  c.eval.batch_size = 16
  c.eval.split = 'test'

  if variant == 'full':
    c.partition_rules = (('.*', 'trainable'),)  # DAPT's model, every parameter trains
  elif variant == 'pointmae':
    m.peft = 'full'               # Point-MAE's network: plain blocks, no class token
  elif variant == 'synthetic':
    m.trans_dim = 64
    m.encoder_dims = 64
    m.depth = 4
    m.num_heads = 4
    m.num_group = 32
    m.group_size = 16
    m.rank = 16
    m.feature_blocks = (1, 2, 3)
    m.label_dims = 16
    m.propagation_dims = (128, 64)
    m.head_dims = (64, 32)
    m.num_classes = 8
    m.num_parts = 22
    c.parallel = 'shard_map'      # faster than pmap on CPU hosts
    c.data.name = 'synthetic_parts'
    c.data.data_dir = ''
    c.data.num_points = 512
    c.data.point_all = 512
    c.data.synthetic_num_train = 1024
    c.data.synthetic_num_test = 256
    c.data.synthetic_points = 1024
    c.data.pool_points = 1024
    c.data.train_split = 'train'
    c.optim.lr = 2e-3
    c.optim.warmup_epochs = 0     # epoch 0 trains at the full rate (a short run)
    c.num_epochs = 10
    c.batch_size = 32
    c.eval.batch_size = 64
    c.eval.every_epochs = 5
    c.checkpoint.every_epochs = 5
    c.log_every_steps = 8
  return common.finalize(c)
