r"""DAPT on few-shot ModelNet40 (Point-MAE backbone): Point-MAE's few-shot recipe (SPEC §7).

Variants: 5way10shot (default), 5way20shot, 10way10shot, 10way20shot; the fold is
`--config.data.fold=0..9`. Each fold trains from the pre-trained checkpoint.

Recipe (Point-MAE cfgs/fewshot.yaml): 150 epochs (0..150), 1,024 points (FPS 1,200 → random
1,024), G 64, K 32, batch 32, AdamW lr 5e-4, weight decay 0.05, cosine with 10 warm-up epochs,
drop-path 0.1, gradient clipping 10, a head with 40 outputs (labels 0..way-1). The model is DAPT
at its ModelNet40 settings (rank 72, head on cls + patch max, adapter dropout 0); the DAPT
release ships no few-shot config, so this pairing is the project's choice.

Published, mean ± std over the 10 folds (5w10s / 5w20s / 10w10s / 10w20s):
  Point-MAE full fine-tuning  96.3±2.5 / 97.8±1.8 / 92.6±4.1 / 95.0±3.0
DAPT's own few-shot figures are not quoted here (not verified).

One fold:
  python -m convert pretrain.pth ckpts/pointmae
  python main.py --config=configs/modelnet_fewshot.py:5way10shot --workdir=runs/fs/fold0 \
      --config.init_from=ckpts/pointmae --config.data.data_dir=data/ModelNetFewshot \
      --config.data.fold=0
All ten folds, mean ± std (README, "Sweeps"):
  python -m dapt_jax.sweep --config=configs/modelnet_fewshot.py:5way10shot --workdir=runs/fs \
      --folds=0-9 --seeds=0 --config.init_from=ckpts/pointmae \
      --config.data.data_dir=data/ModelNetFewshot

`data_dir` holds 5way10shot/0.pkl ... 10way20shot/9.pkl (Point-BERT's ModelNetFewshot).
"""
from configs import common

VARIANTS = {  # name: (way, shot)
    '5way10shot': (5, 10),
    '5way20shot': (5, 20),
    '10way10shot': (10, 10),
    '10way20shot': (10, 20),
}


def get_config(arg=None):
  variant = arg or '5way10shot'
  if variant not in VARIANTS:
    raise ValueError(f'configs/modelnet_fewshot.py: unknown variant {variant!r}; '
                     f'choose one of {sorted(VARIANTS)}')
  way, shot = VARIANTS[variant]
  c = common.base_config()
  c.model.num_classes = 40
  c.model.num_group = 64
  c.model.group_size = 32
  c.model.rank = 72
  c.model.drop_path_rate = 0.1
  c.model.drop_adapter_rate = 0.0
  c.model.head_tokens = ('cls', 'patch')
  c.data.name = 'modelnet_fewshot'
  c.data.data_dir = 'data/ModelNetFewshot'
  c.data.num_points = 1024
  c.data.point_all = 1200
  c.data.way = way
  c.data.shot = shot
  c.data.fold = 0
  c.num_epochs = 150
  c.eval.batch_size = 64
  return common.finalize(c)
