"""A read-only reader of LMDB databases (the ``data.mdb`` that py-lmdb writes), in pure Python.

UniLS-Talk ships its data as an LMDB environment; reading it needs no extra package. This reads
LMDB 0.9's on-disk format (what every py-lmdb release so far writes; format version 1) of the
unnamed main database, little-endian and 64-bit: two meta pages (the one of the latest transaction
wins), a B+tree of branch and leaf pages, large values in overflow pages. Named sub-databases and
duplicate-sorted databases are refused. The file is memory-mapped; a value is read (copied) only when
asked.

Page header (16 bytes): ``pgno`` u64, pad u16, ``flags`` u16, ``lower`` u16, ``upper`` u16 (an
overflow page: ``pages`` u32 in their place), then ``lower - 16`` / 2 node offsets (u16). A node:
``lo`` u16, ``hi`` u16, ``flags`` u16, ``ksize`` u16, the key, then (leaf) the value, or the u64
page of an overflow value when ``flags & BIGDATA``; a branch node's child page is
``lo | hi << 16 | flags << 32``.

Pages and nodes are checked to lie inside the page and the file; a corrupt one raises
:class:`~realm.errors.RealmInputError` (``<data.mdb>: corrupt LMDB file: ...``), never a raw
``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

from realm.errors import RealmInputError

MAGIC, VERSION = 0xBEEFC0DE, 1
HEADER = 16
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = (1 << 64) - 1
_DB = struct.Struct(
    "<IHHQQQQQ"
)  # pad (page size in the free DB), flags, depth, branch, leaf, overflow pages, entries, root
_META = struct.Struct("<IIQQ")  # magic, version, address, map size
MIN_PSIZE, MAX_PSIZE = 256, 1 << 16  # page offsets are u16
NODE = 8  # a node's header: lo, hi, flags, ksize
#: What a corrupt page makes the parsing below raise (turned into a RealmInputError naming the file).
_PARSE_ERRORS = (struct.error, IndexError, ValueError, OverflowError)


class LMDBFile:
    """``LMDBFile(dir_or_data_mdb)``: ``keys()``, ``get(key)``, ``len()``; close with ``close()`` or a ``with``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / "data.mdb" if path.is_dir() else path
        try:
            self._f = open(self.path, "rb")
        except FileNotFoundError:
            raise RealmInputError(self.path, "LMDB data file not found") from None
        try:
            self._m = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            self._f.close()
            raise RealmInputError(self.path, "not an LMDB database (empty file)") from None
        metas = [m for m in (self._meta(0), self._meta(1)) if m is not None]
        if not metas:
            self.close()
            raise RealmInputError(
                self.path, "not an LMDB database (no valid meta page; expected LMDB 0.9, format version 1)"
            )
        self.psize, self.root, self.entries, flags = max(metas)[1:]
        if not MIN_PSIZE <= self.psize <= MAX_PSIZE:
            self.close()
            raise RealmInputError(self.path, f"corrupt LMDB file: page size {self.psize} in the meta page")
        if flags & 0x04:  # MDB_DUPSORT
            self.close()
            raise RealmInputError(self.path, "LMDB main database is duplicate-sorted: not supported")

    def _meta(self, n: int):
        """(txnid, page size, root, entries, flags) of meta page ``n``, or None when it is not one."""
        # page 0 is at 0; page 1 is at the page size that page 0's meta records (else the usual 4096)
        off = 0 if n == 0 else self._psize0() or 4096
        if off + HEADER + _META.size + 2 * _DB.size + 16 > len(self._m):
            return None
        flags = struct.unpack_from("<H", self._m, off + 10)[0]
        magic, version, _, _ = _META.unpack_from(self._m, off + HEADER)
        if not flags & P_META or magic != MAGIC or version != VERSION:
            return None
        base = off + HEADER + _META.size
        free, main = _DB.unpack_from(self._m, base), _DB.unpack_from(self._m, base + _DB.size)
        txnid = struct.unpack_from("<Q", self._m, base + 2 * _DB.size + 8)[0]
        return txnid, free[0], main[7], main[6], main[1]

    def _psize0(self) -> int:
        if len(self._m) < HEADER + _META.size + _DB.size:
            return 0
        return _DB.unpack_from(self._m, HEADER + _META.size)[0]

    # ---------------------------------------------------------------- pages and nodes

    def _page(self, pgno: int) -> tuple[int, int]:
        off = pgno * self.psize
        if pgno == P_INVALID or off + HEADER > len(self._m):
            raise RealmInputError(self.path, f"corrupt LMDB file: page {pgno} is outside the file")
        return off, struct.unpack_from("<H", self._m, off + 10)[0]

    def _corrupt(self, what: str) -> RealmInputError:
        return RealmInputError(self.path, f"corrupt LMDB file: {what}")

    def _page_end(self, pos: int) -> int:
        """The end (file offset) of the page holding file offset ``pos``."""
        return (pos // self.psize + 1) * self.psize

    def _nodes(self, off: int) -> list[int]:
        """The nodes (file offsets) of the branch or leaf page at ``off``, each checked to lie in the page."""
        pgno = off // self.psize
        if off + self.psize > len(self._m):
            raise self._corrupt(f"page {pgno} runs past the end of the file (truncated?)")
        lower = struct.unpack_from("<H", self._m, off + 12)[0]
        if not HEADER <= lower <= self.psize:
            raise self._corrupt(f"page {pgno}'s 'lower' field is {lower}, outside {HEADER}..{self.psize}")
        n = (lower - HEADER) // 2
        nodes = struct.unpack_from(f"<{n}H", self._m, off + HEADER)
        for p in nodes:
            if not lower <= p <= self.psize - NODE:
                raise self._corrupt(
                    f"page {pgno} has a node at offset {p}, outside {lower}..{self.psize - NODE}"
                )
        return [off + p for p in nodes]

    def _key(self, node: int) -> bytes:
        ksize = struct.unpack_from("<H", self._m, node + 6)[0]
        if node + NODE + ksize > self._page_end(node):
            raise self._corrupt(f"a key of {ksize} bytes runs past its page {node // self.psize}")
        return bytes(self._m[node + NODE : node + NODE + ksize])

    def _child(self, node: int) -> int:
        lo, hi, fl = struct.unpack_from("<HHH", self._m, node)
        return lo | hi << 16 | fl << 32

    def _value(self, node: int) -> bytes:
        lo, hi, fl, ksize = struct.unpack_from("<HHHH", self._m, node)
        size, start = lo | hi << 16, node + NODE + ksize
        if fl & (F_SUBDATA | F_DUPDATA):
            raise RealmInputError(self.path, "LMDB sub-databases and duplicate values are not supported")
        if start + (8 if fl & F_BIGDATA else size) > self._page_end(node):
            raise self._corrupt(f"a value runs past its page {node // self.psize}")
        if fl & F_BIGDATA:
            off, pflags = self._page(struct.unpack_from("<Q", self._m, start)[0])
            if not pflags & P_OVERFLOW:
                raise RealmInputError(
                    self.path, "corrupt LMDB file: a large value does not point at an overflow page"
                )
            start = off + HEADER
        if start + size > len(self._m):
            raise RealmInputError(
                self.path, "corrupt LMDB file: a value runs past the end of the file (truncated?)"
            )
        return self._m[start : start + size]

    def _leaves(self, pgno: int, depth: int = 0) -> Iterator[int]:
        """Leaf nodes under page ``pgno``, in key order."""
        if depth > 64:
            raise RealmInputError(self.path, "corrupt LMDB file: B-tree deeper than 64 levels")
        off, flags = self._page(pgno)
        if flags & P_LEAF2:
            raise RealmInputError(self.path, "LMDB fixed-size duplicate pages are not supported")
        if flags & P_LEAF:
            yield from self._nodes(off)
        elif flags & P_BRANCH:
            for node in self._nodes(off):
                yield from self._leaves(self._child(node), depth + 1)
        else:
            raise RealmInputError(self.path, f"corrupt LMDB file: page {pgno} is neither a branch nor a leaf")

    # ---------------------------------------------------------------- the public part

    def __len__(self) -> int:
        return self.entries

    def keys(self) -> list[str]:
        """Every key, in order (decoded as UTF-8, undecodable bytes replaced)."""
        if self.root == P_INVALID:
            return []
        try:
            return [self._key(n).decode("utf-8", "replace") for n in self._leaves(self.root)]
        except RealmInputError:
            raise
        except _PARSE_ERRORS as e:
            raise self._corrupt(f"unparsable page ({type(e).__name__}: {e})") from None

    def get(self, key: str | bytes) -> bytes | None:
        """The value stored under ``key`` (a copy), or None."""
        k = key.encode() if isinstance(key, str) else bytes(key)
        if self.root == P_INVALID:
            return None
        try:
            return self._get(k)
        except RealmInputError:
            raise
        except _PARSE_ERRORS as e:
            raise self._corrupt(f"unparsable page ({type(e).__name__}: {e})") from None

    def _get(self, k: bytes) -> bytes | None:
        pgno = self.root
        for _ in range(64):
            off, flags = self._page(pgno)
            nodes = self._nodes(off)
            if flags & P_BRANCH:  # the last child whose first key is <= k (node 0's key is -inf)
                lo, hi = 1, len(nodes)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if self._key(nodes[mid]) <= k:
                        lo = mid + 1
                    else:
                        hi = mid
                pgno = self._child(nodes[lo - 1])
                continue
            if not flags & P_LEAF:
                raise RealmInputError(
                    self.path, f"corrupt LMDB file: page {pgno} is neither a branch nor a leaf"
                )
            lo, hi = 0, len(nodes)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._key(nodes[mid]) < k:
                    lo = mid + 1
                else:
                    hi = mid
            return self._value(nodes[lo]) if lo < len(nodes) and self._key(nodes[lo]) == k else None
        raise RealmInputError(self.path, "corrupt LMDB file: B-tree deeper than 64 levels")

    def close(self) -> None:
        if getattr(self, "_m", None) is not None:
            self._m.close()
            self._m = None
        self._f.close()

    def __enter__(self) -> LMDBFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
