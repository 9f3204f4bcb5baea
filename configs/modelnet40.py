r"""DAPT on ModelNet40 (Point-MAE backbone), the release's recipe (SPEC §4).

Paper accuracy: 93.5 % overall (1k points, no voting), 1.07 M trainable parameters.

Command:
  python -m convert pretrain.pth ckpts/pointmae
  python main.py --config=configs/modelnet40.py --workdir=runs/modelnet40 \
      --config.init_from=ckpts/pointmae \
      --config.data.data_dir=data/ModelNet/modelnet40_normal_resampled

`data_dir` is the `modelnet40_normal_resampled` folder, or a folder holding the Point-BERT
`modelnet40_{train,test}_8192pts_fps.dat` files or the `modelnet40_ply_hdf5_2048` h5 files.
Voting: `--mode=eval --config.eval.votes=10`.
"""
from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'configs/modelnet40.py takes no variant (got {arg!r})')
  c = common.base_config()
  c.model.num_classes = 40
  c.model.num_group = 64
  c.model.group_size = 32
  c.model.rank = 72
  c.model.drop_path_rate = 0.1
  c.model.drop_adapter_rate = 0.0
  c.model.head_tokens = ('cls', 'patch')
  c.data.name = 'modelnet40'
  c.data.data_dir = 'data/ModelNet/modelnet40_normal_resampled'
  c.data.num_points = 1024
  c.data.point_all = 1200
  return common.finalize(c)
