"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package: a fresh
cluster in a temporary directory, reached only through a Unix socket there."""
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg
import pytest


def _bin_dir() -> str:
  found = shutil.which('initdb') or next(
      iter(sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'), reverse=True)), None)
  if not found:
    pytest.fail('no PostgreSQL server here (initdb): apt-get install postgresql')
  return os.path.dirname(found)


@contextlib.contextmanager
def postgres_server(database: str = 'db'):
  """Yields the SQLAlchemy URL of `database` on a new server; stops it and deletes it after."""
  bin_dir, directory = _bin_dir(), tempfile.mkdtemp(prefix='jaxmodels-pg-')
  as_owner = []
  if os.geteuid() == 0:  # postgres refuses to run as root: run it as the package's user.
    owner = pwd.getpwnam('postgres')
    os.chown(directory, owner.pw_uid, owner.pw_gid)
    as_owner = ['runuser', '-u', 'postgres', '--']
  with socket.socket() as s:  # A free number; the socket file is named after it.
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  data, log = os.path.join(directory, 'data'), os.path.join(directory, 'server.log')
  pg_ctl = [*as_owner, os.path.join(bin_dir, 'pg_ctl'), '-D', data]
  run = lambda command: subprocess.run(command, cwd=directory, check=True, capture_output=True,
                                       text=True, timeout=120)
  try:
    run([*as_owner, os.path.join(bin_dir, 'initdb'), '-D', data, '-U', 'postgres',
         '--auth=trust', '-E', 'UTF8', '--no-sync'])
    run([*pg_ctl, '-l', log, '-w', '-o',
         f"-k {directory} -p {port} -c listen_addresses='' -c fsync=off", 'start'])
  except subprocess.CalledProcessError as e:
    shutil.rmtree(directory, ignore_errors=True)
    pytest.fail(f'PostgreSQL did not start: {e.cmd[-1]}: {e.stderr.strip()[-500:]}')
  try:
    with psycopg.connect(host=directory, port=port, user='postgres', dbname='postgres',
                         autocommit=True) as connection:
      connection.execute(f'CREATE DATABASE {database}')
    yield f'postgresql+psycopg://postgres@/{database}?host={directory}&port={port}'
  finally:
    subprocess.run([*pg_ctl, '-m', 'immediate', 'stop'], cwd=directory, capture_output=True,
                   timeout=120)
    shutil.rmtree(directory, ignore_errors=True)
