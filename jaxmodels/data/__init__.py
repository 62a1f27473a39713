"""Datasets as numpy arrays, preprocessing and jit-able augmentation.

Loading (`load_dataset`) never imports TensorFlow unless tfds must serve the
data; `tfds_source` imports tensorflow_datasets lazily.
"""

from jaxmodels.data.augment import affine_transform
from jaxmodels.data.augment import make_augment
from jaxmodels.data.augment import random_affine
from jaxmodels.data.augment import random_crop
from jaxmodels.data.augment import random_flip
from jaxmodels.data import sources, text
from jaxmodels.data.batching import ShardedExamples
from jaxmodels.data.batching import epoch_batch_indices
from jaxmodels.data.batching import eval_batch_indices
from jaxmodels.data.batching import per_shard_batch
from jaxmodels.data.batching import shard_examples
from jaxmodels.data.batching import take_batch
from jaxmodels.data.dataset import CLASS_NAMES
from jaxmodels.data.dataset import ImageClassificationData
from jaxmodels.data.digits import load_digits
from jaxmodels.errors import DataError, DataUnavailableError
from jaxmodels.data.idx import read_idx
from jaxmodels.data.idx import write_idx
from jaxmodels.data.local import find_local_dir
from jaxmodels.data.local import load_local
from jaxmodels.data.preprocess import channel_stats
from jaxmodels.data.preprocess import normalize
from jaxmodels.data.preprocess import to_model_inputs
from jaxmodels.data.preprocess import validate_images_labels
from jaxmodels.data.sources import load_dataset
from jaxmodels.data.tfds_source import load_tfds
from jaxmodels.data.tfds_source import network_available
from jaxmodels.data.text import (ByteTokenizer, WordVocabulary, clean_text, load_corpus,
                                 load_labelled_texts, load_tfds_texts, read_text, read_text_dir,
                                 split_examples, unigram_entropy, windows)

__all__ = ['affine_transform', 'ByteTokenizer', 'channel_stats', 'CLASS_NAMES', 'clean_text',
           'DataError', 'DataUnavailableError', 'epoch_batch_indices', 'eval_batch_indices',
           'find_local_dir', 'ImageClassificationData', 'load_corpus', 'load_dataset',
           'load_digits', 'load_labelled_texts', 'load_local', 'load_tfds', 'load_tfds_texts',
           'make_augment', 'network_available', 'normalize', 'per_shard_batch', 'random_affine',
           'random_crop', 'random_flip', 'read_idx', 'read_text', 'read_text_dir',
           'shard_examples', 'ShardedExamples', 'split_examples', 'take_batch', 'to_model_inputs',
           'unigram_entropy', 'validate_images_labels', 'windows', 'WordVocabulary', 'write_idx']
