"""Changes a model repository from another process, for tests/test_model_repository.py.

    python model_repository_worker.py save REPO      saves STATE, prints 'saved', waits to be killed
    python model_repository_worker.py add REPO N GO  waits for the file GO, adds N fake versions,
                                                     prints their numbers
"""
import json
import os
import sys
import time

from jaxmodels.serve.model_repository import ModelRepository, ServingState

STATE = ServingState(champion=2, canary=3, canary_percent=12.5, shadow=None, loaded=(1, 2, 3),
                     previous_champions=(1,))


def fake_artifact(tag: str):
  def write(directory):
    with open(os.path.join(directory, 'weights.safetensors'), 'wb') as f:
      f.write(os.urandom(4096))
    with open(os.path.join(directory, 'manifest.json'), 'w', encoding='utf-8') as f:
      json.dump({'tag': tag}, f)
  return write


def main(command: str, repo: str, *rest) -> None:
  repository = ModelRepository(repo)
  if command == 'save':
    repository.save_state(STATE)
    print('saved', flush=True)
    time.sleep(600)
  elif command == 'add':
    count, go = int(rest[0]), rest[1]
    print('ready', flush=True)
    while not os.path.exists(go):
      time.sleep(0.001)
    numbers = [repository.add_version(fake_artifact(f'{os.getpid()}-{i}')) for i in range(count)]
    print(' '.join(map(str, numbers)), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
