#!/usr/bin/env python3
"""What a delta pack is made of, by record kind (FORMAT.md 5.6): for each batch its item
count, its list (decoded and compressed) and its frame; then the bytes of each kind and of
the trailer. Reads the pack's own trailer, nothing else; exits 3 without a word for a pack that holds
no delta record (a data or index pack).

    benchmarks/delta-records.py PACK
"""
import collections
import struct
import sys

NAMES = {0: "file record", 1: "node record", 2: "node batch", 3: "file batch",
         4: "node batch in columns"}


def main(path):
    b = open(path, "rb").read()
    trailer = struct.unpack("<Q", b[-16:-8])[0]
    n = struct.unpack("<I", b[trailer:trailer + 4])[0]
    count, size = collections.Counter(), collections.Counter()
    lists = collections.Counter()
    for i in range(n):
        at = trailer + 4 + 50 * i
        object_kind, _id, off, stored, _raw, _codec = struct.unpack("<B32sQIIB", b[at:at + 50])
        if object_kind != 2:
            continue
        kind = b[off]
        count[kind] += 1
        size[kind] += stored
        if kind in (2, 3, 4):
            items, list_size, list_frame = struct.unpack("<III", b[off + 1:off + 13])
            lists[kind] += list_frame
            if kind != 3:
                print(f"{NAMES[kind]}: {items} items, list {list_size} B as {list_frame} B,"
                      f" frame {stored - 13 - list_frame} B")
    if not count:
        sys.exit(3)
    for kind in sorted(count):
        extra = f" (lists {lists[kind]} B)" if kind in lists else ""
        print(f"{NAMES.get(kind, kind)}: {count[kind]} records, {size[kind]} B{extra}")
    print(f"pack {len(b)} B, trailer and footer {len(b) - trailer} B")


if __name__ == "__main__":
    main(sys.argv[1])
