"""Fields shared by every config; each dataset file fills in its own values.

Every field is defined here once, with a one-line comment. Dataset files only change values.
"""
import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'classification'      # what is trained: classification (dapt_jax/tasks/)
  c.seed = 0                      # root of every random key (init, dropout, augmentation, shuffling)
  c.init_from = config_dict.placeholder(str)  # converted checkpoint dir (python -m convert); None: random backbone
  c.compile_cache_dir = '~/.cache/dapt_jax/jax_cache'  # persistent XLA compilation cache ('' turns it off)
  c.overwrite = False             # allow a workdir that holds a run of a different config to be replaced

  c.model = ml_collections.ConfigDict()
  c.model.trans_dim = 384         # transformer width C
  c.model.depth = 12              # number of DAPT blocks
  c.model.num_heads = 6           # attention heads
  c.model.mlp_ratio = 4.0         # MLP hidden width / C
  c.model.encoder_dims = 384      # patch-encoder output width (must equal trans_dim)
  c.model.num_group = 128         # G: patch tokens (FPS centres)
  c.model.group_size = 32         # K: points per patch
  c.model.rank = 64               # Dynamic Adapter bottleneck r
  c.model.num_classes = 15        # classifier outputs
  c.model.drop_path_rate = 0.3    # stochastic depth at the last block (linear from 0)
  c.model.drop_adapter_rate = 0.2  # dropout inside the adapter
  c.model.head_dropout_rate = 0.5  # dropout in the classification head (release: 0.5)
  c.model.head_tokens = ('cls', 'prompt', 'patch')  # head input: class token, prompt mean, patch max
  c.model.freeze_bn_stats = False  # True: frozen encoder BatchNorm uses running stats (release: False)
  c.model.dtype = 'float32'       # float32 or bfloat16 compute (params float32); float64: checks, JAX_ENABLE_X64=1
  c.model.remat = False           # recompute block activations in the backward pass (saves memory)
  c.model.peft = 'dapt'           # method: dapt|full|linear|vpt_deep|idpt|pointgst|lora|adapter (dapt_jax/models/peft)
  c.model.vpt_prompts = 10        # vpt_deep: prompts per block
  c.model.idpt_prompt_layer = -1  # idpt: block its prompt is inserted before (-1: the last)
  c.model.idpt_k = 20             # idpt: neighbours per token in the EdgeConv graph
  c.model.pgst_rank = 36          # pointgst: PCSA bottleneck width
  c.model.pgst_local = 32         # pointgst: centres per local sub-graph (divides num_group)
  c.model.lora_rank = 8           # lora: rank of the attention qkv/proj updates
  c.model.lora_alpha = 8.0        # lora: updates scaled by lora_alpha / lora_rank
  c.model.adapter_dim = 32        # adapter: bottleneck width of the two adapters per block
  c.model.fps_impl = 'xla'        # farthest point sampling: 'xla' (fori_loop) or 'pallas' (one kernel per cloud)
  c.model.remat_policy = 'matmuls'  # blocks keep for backward: matmul outputs (rest recomputed), 'all' or 'inputs'

  # Ordered (regex over param path, label), first match wins; None: model.peft's own rules.
  c.partition_rules = config_dict.placeholder(tuple)

  c.data = ml_collections.ConfigDict()
  c.data.name = 'scan_object_nn/hardest'  # dataset: scan_object_nn/{objbg,objonly,hardest}, modelnet40, modelnet_fewshot, synthetic_shapes
  c.data.data_dir = 'data/ScanObjectNN'   # folder with the official files
  c.data.tfds_data_dir = config_dict.placeholder(str)  # prepared TFDS files; None: ~/.cache/dapt_jax/tfds
  c.data.num_points = 2048        # N points per cloud fed to the model
  c.data.point_all = 2400         # training: FPS to this many (capped at the cloud size), then a random N
  c.data.skip_full_fps = False    # skip that FPS when it would keep the whole cloud (it only reorders)
  c.data.shuffle = True           # False: training clouds in file order, one stream wrapping round epochs
  c.data.augment = True           # False: train on the evaluation view (FPS to N, no subset/scale/shift)
  c.data.train_split = 'train'    # split trained on
  c.data.eval_split = 'test'      # split evaluated on
  c.data.synthetic_num_train = 1024  # synthetic_shapes: training clouds
  c.data.synthetic_num_test = 256    # synthetic_shapes: test clouds
  c.data.synthetic_points = 1024     # synthetic_shapes: points per stored cloud
  c.data.synthetic_num_classes = 10  # synthetic_shapes: classes
  c.data.synthetic_seed = 0          # synthetic_shapes: generator seed
  c.data.synthetic_pose = 'so3'      # synthetic_shapes: 'so3' (any rotation) or 'upright' (about z)
  c.data.source_format = 'auto'      # modelnet40: 'auto', 'dat', 'txt' or 'h5' files in data_dir
  c.data.modelnet_points = 8192      # modelnet40: points kept per shape when preparing raw files
  c.data.way = 5                     # modelnet_fewshot: classes per task (5 or 10)
  c.data.shot = 10                   # modelnet_fewshot: training shapes per class (10 or 20)
  c.data.fold = 0                    # modelnet_fewshot: which of the 10 folds (0..9)
  c.data.folder_points = 2048        # folder: points per stored cloud (FPS down; fewer resampled, with a warning)
  c.data.folder_mesh_points = 8192   # folder: points sampled uniformly on each mesh surface before that FPS
  c.data.folder_min_points = 32      # folder: clouds with fewer points are refused
  c.data.folder_normalize = 'unit_sphere'  # folder: 'unit_sphere' (centre, radius 1), 'center' (metric scale) or 'none'
  c.data.folder_up_axis = 'y'        # folder: the files' up axis, 'y' or 'z' (turned to y-up)
  c.data.folder_test_fraction = 0.2  # folder without test/: share of each class held out for test
  c.data.folder_split_seed = 0       # folder without test/: seed of that stratified split

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 5e-4               # peak learning rate (AdamW)
  c.optim.weight_decay = 0.05     # decoupled decay on 2+-D params without 'token' in the name
  c.optim.b1 = 0.9                # Adam beta1
  c.optim.b2 = 0.999              # Adam beta2
  c.optim.eps = 1e-8              # Adam epsilon
  c.optim.clip_grad_norm = 10.0   # global-norm clipping of the trainable gradients (0: off)
  c.optim.warmup_epochs = 10      # linear warm-up epochs
  c.optim.warmup_lr_init = 1e-6   # learning rate at the start of warm-up
  c.optim.min_lr = 1e-6           # cosine floor

  c.num_epochs = 300              # cosine length; the release runs epochs 0..num_epochs inclusive
  c.batch_size = 32               # global batch (split across all devices of all hosts)
  c.parallel = 'pmap'             # data parallelism: 'pmap' or 'shard_map'

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1         # evaluate after every this many epochs (not epoch 0) and the last
  c.eval.batch_size = 32          # global evaluation batch (last batch padded and masked)
  c.eval.votes = 1                # >1: voting with this many augmented views, logits averaged
  c.eval.split = 'test'           # split used by --mode=eval

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_epochs = 1   # save after every this many epochs
  c.checkpoint.keep = 2           # keep the last this many checkpoints (plus the best)

  c.log_every_steps = 50          # training metrics to metrics.jsonl / TensorBoard
  c.progress_bar = True           # tqdm bar with samples/s on the training loop
  c.max_steps = config_dict.placeholder(int)  # stop early after this many steps (tests, smoke runs)
  return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so a misspelled override fails loudly."""
  c.lock()
  return c
