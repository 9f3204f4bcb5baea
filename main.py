r"""dapt-jax: fine-tune, evaluate and run DAPT on point clouds.

  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --config.init_from=ckpts/pointmae
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest --mode=eval
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --mode=predict --input=cloud.ply

Any config field can be overridden: --config.optim.lr=1e-3, --config.data.data_dir=PATH.
"""
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/scanobjectnn.py:hardest.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and evaluation output.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'],
                  'train (resumes if the workdir has a run), eval, or predict.')
flags.DEFINE_string('input', None, '--mode=predict: a point-cloud file (.npy .txt .xyz .ply .h5).')
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (multi-host). Default: '
                  'when a cluster environment (SLURM, TPU pod, JAX_COORDINATOR_ADDRESS) is seen.')

FLAGS = flags.FLAGS


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _multi_host() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  env = os.environ
  return bool(env.get('JAX_COORDINATOR_ADDRESS') or env.get('SLURM_NTASKS', '1') not in ('', '1')
              or env.get('TPU_WORKER_HOSTNAMES') or env.get('MEGASCALE_COORDINATOR_ADDRESS'))


def main(argv):
  del argv
  if FLAGS.config is None:
    _fail('--config is required, e.g. --config=configs/synthetic.py')
  if FLAGS.workdir is None and FLAGS.mode != 'predict':
    _fail('--workdir is required')
  if FLAGS.mode == 'predict' and not FLAGS.input:
    _fail('--mode=predict needs --input=FILE')
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      force=True)
  logging.getLogger('absl').setLevel(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  if _multi_host():
    env = os.environ
    if env.get('JAX_COORDINATOR_ADDRESS') and env.get('JAX_NUM_PROCESSES'):
      jax.distributed.initialize(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                                 num_processes=int(env['JAX_NUM_PROCESSES']),
                                 process_id=int(env.get('JAX_PROCESS_ID', '0')))
    else:  # SLURM, TPU pods, ...: JAX detects the cluster itself
      jax.distributed.initialize()

  from dapt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from dapt_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from dapt_jax import data  # pylint: disable=g-import-not-at-top
  from dapt_jax import evaluate  # pylint: disable=g-import-not-at-top
  from dapt_jax import model  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  user_errors = (data.DataError, model.ModelConfigError, partition.PartitionError,
                 pretrained.PretrainedError, checkpoints.CheckpointError,
                 train.TrainingError, evaluate.InputError, compile_cache.CompileCacheError)
  config = FLAGS.config
  try:
    compile_cache.enable(config.compile_cache_dir)  # before anything compiles
    if FLAGS.mode == 'train':
      summary = train.train_and_evaluate(config, FLAGS.workdir)
      if summary['final_accuracy'] is not None:
        print(f"final accuracy: {100 * summary['final_accuracy']:.2f} % "
              f"(mean class {100 * summary['final_mean_class_accuracy']:.2f} %), "
              f"best {100 * summary['best_accuracy']:.2f} % at epoch {summary['best_epoch']}; "
              f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
              f"parameters trained")
      elif summary['stopped'] == 'finished':
        best = summary['best_accuracy']
        print(f"the run in {FLAGS.workdir} is already complete ({summary['steps']} steps)"
              + (f"; best accuracy {100 * best:.2f} % at epoch {summary['best_epoch']}"
                 if best is not None else ''))
      else:
        print(f"stopped after step {summary['steps']} ({summary['stopped']}); "
              're-run the same command to resume')
    elif FLAGS.mode == 'eval':
      m = train.evaluate_workdir(config, FLAGS.workdir)
      print(f"{m['split']}: accuracy {100 * m['accuracy']:.2f} %, mean class accuracy "
            f"{100 * m['mean_class_accuracy']:.2f} % over {m['num_samples']} samples "
            f"(votes={m['votes']}); wrote {FLAGS.workdir}/eval_{m['split']}.json")
    else:
      top = train.predict_file(config, FLAGS.workdir, FLAGS.input)
      for rank, (name, prob) in enumerate(top, 1):
        print(f'{rank}. {name:<20} {100 * prob:6.2f} %')
  except user_errors as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


if __name__ == '__main__':
  app.run(main)
