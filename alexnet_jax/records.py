"""The prepared on-disk format: ArrayRecord shards of checked examples, their metadata and the
training split's pixel statistics. `prepare` writes it; `datasets` reads it (through grain's
ArrayRecordDataSource).

A prepared directory holds, per split, shards `{split}-{i:05d}.array_record` (one example per
record, one record per chunk for random access) each with a `{split}-{i:05d}.stats.npz`
written after it (the shard's example names, the files skipped, and its pixel sums: the shard
counts as done once it exists), then `metadata.json` (classes, counts, per-channel mean/std,
the RGB covariance's eigen-decomposition) and `mean_image.npy`.

A record is `MAGIC, crc32, label, name length, name, image` with the CRC-32 taken over
everything after it: a flipped byte anywhere in the label, name or image is caught on read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

FORMAT = 'array_record/1'  # metadata['storage']: absent in directories of the older format.
METADATA = 'metadata.json'
MEAN_IMAGE = 'mean_image.npy'
_MAGIC = b'AXR1'
_HEADER = struct.Struct('<4sIiI')  # magic, crc32 of the rest, label, name length.


class FormatError(ValueError):
  """A prepared directory that cannot be read as a whole (one line)."""


class BadRecord(Exception):
  """One record that cannot be used: unreadable or failing its checksum."""


@dataclasses.dataclass(frozen=True)
class Example:
  name: str  # The original file, for reports.
  label: int
  image: bytes  # JPEG, or raw (S, S, 3) uint8 bytes (metadata['format']).


def encode(example: Example) -> bytes:
  name = example.name.encode('utf-8')
  rest = struct.pack('<iI', example.label, len(name)) + name + example.image
  return _MAGIC + struct.pack('<I', zlib.crc32(rest)) + rest


def decode(record: bytes) -> Example:
  """The example a record holds; BadRecord if it is damaged."""
  if len(record) < _HEADER.size or record[:4] != _MAGIC:
    raise BadRecord('not an example record')
  _, crc, label, name_length = _HEADER.unpack_from(record)
  if zlib.crc32(memoryview(record)[8:]) != crc:
    raise BadRecord('checksum mismatch')
  start = _HEADER.size
  try:
    name = bytes(record[start:start + name_length]).decode('utf-8')
  except UnicodeDecodeError:
    raise BadRecord('checksum mismatch') from None  # Unreachable unless the CRC collides.
  return Example(name, label, bytes(record[start + name_length:]))


# ---- Shards ----------------------------------------------------------------------------------


def shard_path(directory: str, split: str, shard: int) -> str:
  return os.path.join(directory, f'{split}-{shard:05d}.array_record')


def stats_path(directory: str, split: str, shard: int) -> str:
  return os.path.join(directory, f'{split}-{shard:05d}.stats.npz')


def write_shard(path: str, records) -> None:
  """Writes `records` (bytes) to `path` atomically: a killed writer leaves no shard. One
  record per chunk (random access), uncompressed (JPEGs do not shrink; reads stay cheap)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  writer = array_record_module.ArrayRecordWriter(path + '.tmp', 'group_size:1,uncompressed')
  try:
    for record in records:
      writer.write(record)
  finally:
    writer.close()
  os.replace(path + '.tmp', path)


def save_stats(path: str, **arrays: np.ndarray) -> None:
  with open(path + '.tmp', 'wb') as f:  # np.savez would append .npz to a .tmp name.
    np.savez(f, **arrays)
  os.replace(path + '.tmp', path)


class Shard:
  """One shard's records by index. A shard that does not open (truncated, say) makes each
  of its records a BadRecord, not the whole dataset unreadable."""

  def __init__(self, path: str):
    self.path, self._source, self._error = path, None, None

  def __getstate__(self):  # Grain workers open their own readers.
    return {'path': self.path, '_source': None, '_error': None}

  def __getitem__(self, j: int) -> bytes:
    if self._source is None and self._error is None:
      import grain  # pylint: disable=g-import-not-at-top
      try:
        self._source = grain.sources.ArrayRecordDataSource([self.path])
      except Exception as e:  # pylint: disable=broad-except  # riegeli raises RuntimeError.
        self._error = f'the shard does not open ({_reason(e) or "truncated or damaged"})'
    if self._error:
      raise BadRecord(self._error)
    try:
      return self._source[j]
    except Exception as e:  # pylint: disable=broad-except
      raise BadRecord(f'unreadable ({_reason(e)})') from None


def _reason(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else ''


# ---- Metadata and pixel statistics -----------------------------------------------------------


def pixel_statistics(image_sum: np.ndarray, rgb_sum: np.ndarray, rgb_outer: np.ndarray,
                     images_count: int) -> dict[str, Any]:
  """Per-channel mean/std and the RGB covariance's eigen-decomposition (0-255 units)."""
  n = images_count * image_sum.shape[0] * image_sum.shape[1]
  mean = rgb_sum / n
  cov = rgb_outer / n - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(cov)  # Ascending, like the code's (19.72, 37.09, 121.78)^2.
  return {'mean_rgb': mean.tolist(), 'std_rgb': np.sqrt(np.diag(cov)).tolist(),
          'rgb_covariance': cov.tolist(), 'eigval': eigval.clip(min=0).tolist(),
          'eigvec': eigvec.tolist()}


def is_prepared(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, METADATA))


def read_metadata(directory: str) -> dict[str, Any]:
  """The metadata of a prepared directory, checked to be this format's."""
  path = os.path.join(directory, METADATA)
  if not os.path.isfile(path):
    raise FormatError(f'data.path: {directory!r} is not a prepared dataset (no {METADATA}); '
                      'run python -m alexnet_jax.prepare first, or use data.source=folder')
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise FormatError(f'data.path: {path} is unreadable ({e})') from None
  if meta.get('storage') != FORMAT:
    raise FormatError(f'data.path: {directory!r} was prepared in an older format; run '
                      'python -m alexnet_jax.prepare again into a new --output directory')
  return meta


def write_metadata(directory: str, meta: dict[str, Any]) -> None:
  path = os.path.join(directory, METADATA)
  with open(path + '.tmp', 'w') as f:
    json.dump(dict(meta, storage=FORMAT), f, indent=1)
  os.replace(path + '.tmp', path)
