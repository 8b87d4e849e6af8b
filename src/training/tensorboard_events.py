"""TensorBoard event files without TensorFlow: scalars and encoded images.

An event file is a sequence of TFRecords, each framing one serialized `tensorflow.Event`
protocol buffer:

    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

(little-endian; masked = rotate the CRC-32C right by 15 bits and add 0xa282ead8). The few
protobuf messages needed are encoded by hand below: field numbers follow TensorFlow's
event.proto and summary.proto. TensorBoard reads the file while it grows, so records are
appended and flushed; a record cut short by a crash is ignored by its reader.
"""
from __future__ import annotations

import os
import socket
import struct
import time

FILE_VERSION = b"brain.Event:2"
SESSION_START = 1          # SessionLog.SessionStatus.START
_COLORSPACE_RGB = 3


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1   # Castagnoli, reflected
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame around `data`."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# --- protobuf wire format: (field number << 3) | wire type, then the value -------------------

def _varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1          # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _double_field(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def encode_event(wall_time: float, step: int, *, file_version: bytes | None = None,
                 summary_values: list[bytes] | None = None, session_status: int | None = None) -> bytes:
    """Event{wall_time=1, step=2, file_version=3, summary=5, session_log=7}."""
    out = _double_field(1, wall_time) + _int_field(2, step)
    if file_version is not None:
        out += _bytes_field(3, file_version)
    if summary_values is not None:
        out += _bytes_field(5, b"".join(_bytes_field(1, v) for v in summary_values))   # Summary.value
    if session_status is not None:
        out += _bytes_field(7, _int_field(1, session_status))                          # SessionLog.status
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag=1, simple_value=2}."""
    return _bytes_field(1, tag.encode("utf-8")) + _float_field(2, float(value))


def image_value(tag: str, encoded: bytes, height: int, width: int) -> bytes:
    """Summary.Value{tag=1, image=4: Image{height=1, width=2, colorspace=3, encoded_image_string=4}}."""
    image = (_int_field(1, height) + _int_field(2, width) + _int_field(3, _COLORSPACE_RGB)
             + _bytes_field(4, encoded))
    return _bytes_field(1, tag.encode("utf-8")) + _bytes_field(4, image)


class TensorBoardWriter:
    """Appends events to a new `events.out.tfevents.*` file in `log_dir`.

    `start_step` > 0 (a resumed run that has done `start_step` steps) first writes a
    session-start event at step `start_step` + 1: TensorBoard then drops the earlier files'
    events from that step on, as the CSV log does with its rows, because those steps are
    trained again.
    """

    _opened = 0     # a second writer in the same process and second gets its own file

    def __init__(self, log_dir: str, start_step: int = 0):
        os.makedirs(log_dir, exist_ok=True)
        now = time.time()
        TensorBoardWriter._opened += 1
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{TensorBoardWriter._opened}"
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "xb")
        self._write(encode_event(now, 0, file_version=FILE_VERSION))
        if start_step > 0:
            self._write(encode_event(now, start_step + 1, session_status=SESSION_START))
        self._file.flush()

    def _write(self, event: bytes) -> None:
        self._file.write(tfrecord(event))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event holding every `tag: value` pair, at `step`."""
        if values:
            self._write(encode_event(time.time(), step,
                                     summary_values=[scalar_value(t, v) for t, v in values.items()]))
            self._file.flush()

    def image(self, step: int, tag: str, encoded: bytes, height: int, width: int) -> None:
        """An already encoded PNG or JPEG picture."""
        self._write(encode_event(time.time(), step, summary_values=[image_value(tag, encoded, height, width)]))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
