#!/usr/bin/env python3
"""Prints the number of rows of a Parquet file, read from its footer, with no dependencies.

    parquet-rows.py FILE

The footer is a Thrift (compact protocol) FileMetaData: field 3 is num_rows, and field 4 the row
groups, each with its own num_rows (field 3); the sum of those is checked against the total.
"""

import struct
import sys


class Compact:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self):
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self):
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind):
        if kind in (1, 2):  # booleans: the value is in the type
            return
        if kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            length = self.varint()  # read first: `self.pos += self.varint()` would add to the old pos
            self.pos += length
        elif kind in (9, 10):
            elem, size = self.list_header()
            for _ in range(size):
                self.skip(elem)
        elif kind == 11:
            size = self.varint()
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.skip(kinds >> 4)
                    self.skip(kinds & 0x0F)
        elif kind == 12:
            self.struct(lambda field, kind: self.skip(kind))
        else:
            raise ValueError(f"unknown Thrift compact type {kind}")

    def list_header(self):
        header = self.byte()
        size = header >> 4
        if size == 15:
            size = self.varint()
        return header & 0x0F, size

    def struct(self, on_field):
        """Reads a struct, calling on_field(id, type) for each field (which must consume it)."""
        last = 0
        while True:
            header = self.byte()
            if header == 0:
                return
            delta, kind = header >> 4, header & 0x0F
            field = last + delta if delta else self.zigzag()
            on_field(field, kind)
            last = field


def rows(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError(f"{path}: not a Parquet file")
    (length,) = struct.unpack("<I", data[-8:-4])
    reader = Compact(data[-8 - length : -8])
    found = {"total": None, "groups": []}

    def row_group(field, kind):
        if field == 3 and kind == 6:
            found["groups"].append(reader.zigzag())
        else:
            reader.skip(kind)

    def file_meta(field, kind):
        if field == 3 and kind == 6:
            found["total"] = reader.zigzag()
        elif field == 4 and kind == 9:
            elem, size = reader.list_header()
            for _ in range(size):
                reader.struct(row_group)
        else:
            reader.skip(kind)

    reader.struct(file_meta)
    if found["total"] is None:
        raise ValueError(f"{path}: no num_rows in the footer")
    if sum(found["groups"]) != found["total"]:
        raise ValueError(f"{path}: row groups hold {sum(found['groups'])} rows, footer says {found['total']}")
    return found["total"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    print(rows(sys.argv[1]))
