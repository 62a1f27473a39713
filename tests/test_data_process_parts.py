"""Multi-process input: each process loads its own contiguous part of each split."""
import numpy as np
import tensorflow_datasets as tfds

from jaxmodels.data import load_dataset, write_idx


def test_local_parts_tile_the_split(tmp_path):
  rng = np.random.default_rng(0)
  images = {p: rng.integers(0, 256, (n, 28, 28), np.uint8) for p, n in (('train', 21), ('t10k', 9))}
  labels = {p: rng.integers(0, 10, len(x)).astype(np.uint8) for p, x in images.items()}
  for p in images:
    write_idx(tmp_path / f'{p}-images-idx3-ubyte.gz', images[p])
    write_idx(tmp_path / f'{p}-labels-idx1-ubyte.gz', labels[p])
  parts = [load_dataset('mnist', source='local', local_dir=tmp_path, process_index=i,
                        process_count=3) for i in range(3)]
  np.testing.assert_array_equal(np.concatenate([p.train_images[..., 0] for p in parts]),
                                images['train'])
  np.testing.assert_array_equal(np.concatenate([p.test_labels for p in parts]), labels['t10k'])
  assert [len(p.train_labels) for p in parts] == [7, 7, 7]
  assert parts[1].source.endswith('(part 2 of 3)')


def test_tfds_parts_tile_the_split(tmp_path):
  # A real prepared dataset (DummyMnist builds from code, offline): mock_data ignores splits.
  tfds.testing.DummyMnist(data_dir=tmp_path).download_and_prepare()
  whole = load_dataset('dummy_mnist', data_dir=tmp_path)
  parts = [load_dataset('dummy_mnist', data_dir=tmp_path, process_index=i, process_count=2)
           for i in range(2)]
  assert [len(p.train_labels) for p in parts] == [10, 10]
  np.testing.assert_array_equal(np.concatenate([p.train_images for p in parts]), whole.train_images)
  assert parts[0].source == 'tfds:dummy_mnist (part 1 of 2)'
