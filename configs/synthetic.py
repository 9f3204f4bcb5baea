r"""The embedded demo: a small DAPT model on the generated `synthetic_shapes` dataset.

No files needed; finishes in a few minutes on 2 CPU cores. Without `--config.init_from` the
backbone is randomly initialised and only DAPT's parts train on top of its random features;
`--config.init_from=assets/pretrained/synthetic_small` starts from the backbone this project
pre-trained for this size (`python -m dapt_jax.demo.compare` runs both, README "Quick start").
Chance is 10 %.

There is no paper figure for it; measured on a random backbone: 43.4 % test accuracy after
epochs 0..15 (about 3 minutes on 2 CPU cores; docs/benchmarks.md).

Command:
  python main.py --config=configs/synthetic.py --workdir=runs/synthetic
"""
from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'configs/synthetic.py takes no variant (got {arg!r})')
  c = common.base_config()
  c.model.trans_dim = 64
  c.model.encoder_dims = 64
  c.model.depth = 2
  c.model.num_heads = 4
  c.model.num_group = 32
  c.model.group_size = 16
  c.model.rank = 16
  c.model.num_classes = 10
  c.model.drop_path_rate = 0.1
  c.model.drop_adapter_rate = 0.0
  # pmap runs several times slower than shard_map on CPU hosts; the demo is meant for those.
  c.parallel = 'shard_map'
  c.data.name = 'synthetic_shapes'
  c.data.data_dir = ''
  c.data.num_points = 512
  c.data.point_all = 600
  c.data.synthetic_num_train = 1024
  c.data.synthetic_num_test = 256
  c.data.synthetic_points = 1024
  c.data.synthetic_num_classes = 10
  c.optim.lr = 1e-3
  c.optim.warmup_epochs = 2
  c.num_epochs = 15
  c.batch_size = 32
  c.eval.every_epochs = 5
  c.checkpoint.every_epochs = 5
  c.log_every_steps = 10
  return common.finalize(c)
