"""Where the run's numbers go: TensorBoard event files written without TensorFlow."""
import struct

from alexnet_jax import metrics


def test_tensorboard_event_file_is_valid_tfrecord(tmp_path):
  """Records framed as TFRecords with masked CRC-32C, holding the scalars' tags."""
  writer = metrics.TensorBoardFile(str(tmp_path))
  writer.scalar('val_top1_error', 0.25, 7)
  writer.close()
  data = open(writer.path, 'rb').read()
  records, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    assert struct.unpack('<I', data[i + 8:i + 12])[0] == metrics._masked_crc32c(header)
    n = struct.unpack('<Q', header)[0]
    record = data[i + 12:i + 12 + n]
    assert struct.unpack('<I', data[i + 12 + n:i + 16 + n])[0] == metrics._masked_crc32c(record)
    records.append(record)
    i += 16 + n
  assert len(records) == 2 and b'brain.Event:2' in records[0]
  assert b'val_top1_error' in records[1] and struct.pack('<f', 0.25) in records[1]
  # The CRC-32C of '123456789' is 0xE3069283 (the standard check value).
  crc = metrics._masked_crc32c(b'123456789')
  unmasked = ((crc - 0xA282EAD8) & 0xFFFFFFFF)
  assert ((unmasked << 15) | (unmasked >> 17)) & 0xFFFFFFFF == 0xE3069283
