r"""DAPT on ScanObjectNN (Point-MAE backbone), the release's recipe (SPEC §4).

Variants (paper accuracy, DAPT with a Point-MAE backbone, 1.1 M trainable parameters):
  hardest  PB-T50-RS  85.08 %  (default)
  objbg    OBJ-BG     90.88 %
  objonly  OBJ-ONLY   90.19 %

Command:
  python -m convert pretrain.pth ckpts/pointmae
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --config.init_from=ckpts/pointmae --config.data.data_dir=data/ScanObjectNN

`data_dir` is the folder that contains `main_split/` and `main_split_nobg/`.
"""
from configs import common

VARIANTS = {
    # name: (dataset config, drop_path_rate, drop_adapter_rate, head tokens)
    'objbg': ('scan_object_nn/objbg', 0.3, 0.5, ('cls', 'prompt', 'patch')),
    'objonly': ('scan_object_nn/objonly', 0.1, 0.0, ('cls', 'prompt')),
    'hardest': ('scan_object_nn/hardest', 0.3, 0.2, ('cls', 'prompt', 'patch')),
}


def get_config(arg=None):
  variant = arg or 'hardest'
  if variant not in VARIANTS:
    raise ValueError(f'configs/scanobjectnn.py: unknown variant {variant!r}; '
                     f'choose one of {sorted(VARIANTS)}')
  name, drop_path, drop_adapter, head_tokens = VARIANTS[variant]
  c = common.base_config()
  c.model.num_classes = 15
  c.model.num_group = 128
  c.model.group_size = 32
  c.model.rank = 64
  c.model.drop_path_rate = drop_path
  c.model.drop_adapter_rate = drop_adapter
  c.model.head_tokens = head_tokens
  c.data.name = name
  c.data.data_dir = 'data/ScanObjectNN'
  c.data.num_points = 2048
  c.data.point_all = 2400
  return common.finalize(c)
