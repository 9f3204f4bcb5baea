r"""Point-MAE pre-training (masked autoencoder, SPEC §6), Point-MAE's recipe.

Variants:
  (default)  ShapeNet-55, the full model and recipe of Point-MAE's cfgs/pretrain.yaml: ViT-S
             encoder (384 wide, 12 blocks, 6 heads), 4-block decoder, 64 groups of 32 from 1,024
             points, 60 % random masking, Chamfer-L2; AdamW lr 1e-3, weight decay 0.05, cosine
             over 300 epochs with 10 warm-up, batch 128, drop-path 0.1, no gradient clipping.
             Point-MAE publishes no pre-training metric; judge the backbone downstream
             (SPEC §6.6: full fine-tuning 90.02 / 88.29 / 85.18 on ScanObjectNN).
  synthetic  the generated shapes (no files), a small model (64 wide, 2 blocks), a few minutes
             on 2 CPU cores: the smoke test and the shape of the demo's backbone.
  demo       the backbone shipped in assets/pretrained/synthetic_small (made by
             scripts/pretrain_demo_backbone.sh): the synthetic variant's model, pre-trained longer
             on a larger generated set.

Commands:
  python main.py --config=configs/pretrain_shapenet.py --workdir=runs/pretrain \
      --config.data.data_dir=data/ShapeNet55-34
  python -m convert --to-torch runs/pretrain pretrain.pth        # Point-MAE's checkpoint layout
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/dapt \
      --config.init_from=runs/pretrain                           # DAPT on the new backbone

`data_dir` is the folder holding `ShapeNet-55/{train,test}.txt` and `shapenet_pc/`.
"""
import ml_collections

from configs import common

VARIANTS = ('shapenet55', 'synthetic', 'demo')


def model_config(trans_dim: int, depth: int, num_heads: int, num_group: int, group_size: int,
                 decoder_depth: int, decoder_num_heads: int) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.trans_dim = trans_dim         # transformer width C (encoder and decoder)
  m.depth = depth                 # encoder blocks
  m.num_heads = num_heads         # encoder attention heads
  m.mlp_ratio = 4.0               # MLP hidden width / C
  m.encoder_dims = trans_dim      # patch-encoder output width (must equal trans_dim)
  m.num_group = num_group         # G: patch tokens (FPS centres)
  m.group_size = group_size       # K: points per patch
  m.drop_path_rate = 0.1          # stochastic depth at the last block (linear from 0), both stacks
  m.mask_ratio = 0.6              # masked groups per cloud: int(mask_ratio * G), exactly
  m.mask_type = 'rand'            # 'rand' (uniform) or 'block' (a centre and its nearest centres)
  m.decoder_depth = decoder_depth  # decoder blocks
  m.decoder_num_heads = decoder_num_heads  # decoder attention heads
  m.dtype = 'float32'             # compute dtype: float32 or bfloat16 (params stay float32)
  m.remat = False                 # recompute block activations in the backward pass (saves memory)
  return m


def get_config(arg=None):
  variant = arg or 'shapenet55'
  if variant not in VARIANTS:
    raise ValueError(f'configs/pretrain_shapenet.py: unknown variant {variant!r}; choose one of '
                     f'{", ".join(VARIANTS)}')
  c = common.base_config()
  c.task = 'pretrain'
  c.partition_rules = (('.*', 'trainable'),)  # everything trains
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.clip_grad_norm = 0.0    # Point-MAE pre-trains without clipping
  c.num_epochs = 300
  c.batch_size = 128
  c.eval.batch_size = 128
  c.eval.every_epochs = 10        # the test-split Chamfer loss (logged; selects nothing)
  c.checkpoint.every_epochs = 1
  c.data.point_all = 0            # ignored: pre-training draws a random subset, no FPS (SPEC §6.1)
  if variant == 'shapenet55':
    c.model = model_config(384, 12, 6, 64, 32, 4, 6)
    c.data.name = 'shapenet55'
    c.data.data_dir = 'data/ShapeNet55-34'
    c.data.num_points = 1024      # random subset of the stored 8,192, then pc_norm
    return common.finalize(c)

  # Generated shapes: the demo backbone's size (configs/synthetic.py's encoder).
  c.model = model_config(64, 2, 4, 32, 16, 2, 4)
  c.parallel = 'shard_map'        # faster than pmap on CPU hosts
  c.data.name = 'synthetic_shapes'
  c.data.data_dir = ''
  c.data.num_points = 512
  c.data.synthetic_points = 1024
  c.data.synthetic_num_classes = 10  # labels are ignored by pre-training
  c.optim.warmup_epochs = 1
  c.batch_size = 32
  c.eval.batch_size = 64
  c.log_every_steps = 10
  if variant == 'synthetic':
    c.data.synthetic_num_train = 1024
    c.data.synthetic_num_test = 256
    c.num_epochs = 10
    c.eval.every_epochs = 5
    c.checkpoint.every_epochs = 5
  else:  # demo
    c.data.synthetic_num_train = 2048
    c.data.synthetic_num_test = 256
    c.data.synthetic_seed = 1     # other clouds than the fine-tuning demo's (seed 0)
    c.num_epochs = 30
    c.optim.warmup_epochs = 2
    c.eval.every_epochs = 5
    c.checkpoint.every_epochs = 1
  return common.finalize(c)
