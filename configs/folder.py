r"""DAPT on your own data: a folder of class folders of point clouds and meshes.

    my_clouds/train/<class>/<files>   .npy .txt .xyz .pts .csv .ply .pcd .h5 clouds and
    my_clouds/test/<class>/<files>    .off .obj .stl meshes; test/ and val/ optional (without
    my_clouds/val/<class>/<files>     test/, a stratified 20 % of train/ by seed)

The ModelNet40 recipe (1,024 points, 64 patches of 32, adapter rank 72) on a Point-MAE backbone;
`model.num_classes = 0` takes the count from the class folders (any other value must match them).
Classes are written to `<workdir>/classes.json`, and predictions are labelled with them. There is
no published figure for your data; the example folder below is a smoke test.

Command:
  python -m convert pretrain.pth ckpts/pointmae            # Point-MAE's pre-trained backbone
  python main.py --config=configs/folder.py --workdir=runs/mine \
      --config.init_from=ckpts/pointmae --config.data.data_dir=my_clouds
  python main.py --config=configs/folder.py --workdir=runs/mine --mode=predict --input=new_scans/

Variant `small`: the demo's model (configs/synthetic.py sizes, random backbone) for a smoke run on
CPU, e.g. on the example folder (3 classes, mixed formats, 48 train / 24 test files; measured:
95.8 % test accuracy after epochs 0..100, best 100 % at epoch 90, 85 s of CPU time):
  python -m dapt_jax.data.folder --make-example my_clouds
  python main.py --config=configs/folder.py:small --workdir=runs/example \
      --config.data.data_dir=my_clouds
"""
from configs import common


def get_config(arg=None):
  if arg not in (None, '', 'small'):
    raise ValueError(f"configs/folder.py: unknown variant {arg!r}; use none or 'small'")
  c = common.base_config()
  c.model.num_classes = 0  # 0: as many as the class folders under data_dir/train
  c.model.num_group = 64
  c.model.group_size = 32
  c.model.rank = 72
  c.model.drop_path_rate = 0.1
  c.model.drop_adapter_rate = 0.0
  c.model.head_tokens = ('cls', 'patch')
  c.data.name = 'folder'
  c.data.data_dir = ''  # required: --config.data.data_dir=my_clouds
  c.data.num_points = 1024
  c.data.point_all = 1200
  c.data.folder_points = 2048
  c.data.folder_mesh_points = 8192
  if arg == 'small':  # the demo's model (configs/synthetic.py): a CPU smoke run, random backbone
    c.model.update(trans_dim=64, encoder_dims=64, depth=2, num_heads=4, num_group=32,
                   group_size=16, rank=16)
    c.parallel = 'shard_map'
    c.data.num_points = 512
    c.data.point_all = 600
    c.data.folder_points = 1024
    c.data.folder_mesh_points = 2048
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 2
    c.num_epochs = 100
    c.batch_size = 16
    c.eval.batch_size = 16
    c.eval.every_epochs = 10
    c.checkpoint.every_epochs = 10
    c.log_every_steps = 10
  return common.finalize(c)
