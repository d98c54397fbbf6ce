"""The prepared format: records that carry their own checksum, shards that fail one by one."""
import numpy as np
import pytest

from alexnet_jax import records


def test_a_record_round_trips_and_any_flipped_byte_is_caught():
  example = records.Example('train/cat/cat_0.jpg', 7, bytes(range(256)) * 4)
  encoded = records.encode(example)
  assert records.decode(encoded) == example
  for at in range(4, len(encoded), 97):  # The checksum, label, name length, name and image.
    damaged = bytearray(encoded)
    damaged[at] ^= 0x10
    with pytest.raises(records.BadRecord, match='checksum mismatch|not an example record'):
      records.decode(bytes(damaged))
  with pytest.raises(records.BadRecord, match='not an example record'):
    records.decode(b'\xff\xd8\xff\xe0 a bare JPEG')


def test_a_shard_reads_by_index_and_a_truncated_one_fails_record_by_record(tmp_path):
  path = str(tmp_path / 'train-00000.array_record')
  examples = [records.Example(f'f{i}.jpg', i, bytes([i]) * (100 + i)) for i in range(20)]
  records.write_shard(path, (records.encode(e) for e in examples))
  shard = records.Shard(path)
  assert [records.decode(shard[i]) for i in (19, 0, 7)] == [examples[19], examples[0],
                                                             examples[7]]
  size = (tmp_path / 'train-00000.array_record').stat().st_size
  with open(path, 'r+b') as f:
    f.truncate(size // 2)
  shard = records.Shard(path)
  for i in (0, 19):
    with pytest.raises(records.BadRecord, match='the shard does not open'):
      shard[i]


def test_an_older_prepared_directory_is_one_line(tmp_path):
  (tmp_path / records.METADATA).write_text('{"format": "jpeg", "splits": {}}')
  with pytest.raises(records.FormatError, match='prepared in an older format; run '
                     'python -m alexnet_jax.prepare again') as e:
    records.read_metadata(str(tmp_path))
  assert '\n' not in str(e.value)
  records.write_metadata(str(tmp_path), {'format': 'jpeg', 'splits': {}})
  assert records.read_metadata(str(tmp_path))['storage'] == records.FORMAT
  np.testing.assert_equal(records.is_prepared(str(tmp_path)), True)
