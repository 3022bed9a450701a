"""Summation orders: the tree in which a model adds its terms, as canonical nested tuples.

A tree's leaves are the term indices 0 .. K-1 (and K for a matrix unit's accumulator C);
a node is a tuple of its children, an addition rounded once (a node of more than two
children is a fused multi-term addition, as in a block FMA). The canonical form sorts each
node's children by their smallest leaf and drops one-child nodes: two reductions with the
same canonical tree add the same values in the same groups, whatever their code looks like.
"""

from __future__ import annotations

from .blockfma import BlockFMA
from .models import Chunked, Exact, Model, Pairwise, Sequential, Tree

__all__ = ["canonical", "summation_tree", "leaves"]


def leaves(node) -> list:
    """The leaf indices under a node, in tree order."""
    return [node] if isinstance(node, int) else [i for c in node for i in leaves(c)]


def canonical(node):
    """node with each tuple's children sorted by smallest leaf and one-child tuples removed."""
    if isinstance(node, int):
        return node
    kids = [canonical(c) for c in node]
    if len(kids) == 1:
        return kids[0]
    return tuple(sorted(kids, key=lambda c: min(leaves(c))))


def _chain(items: list):
    """((items[0], items[1]), items[2]) ...: one item at a time onto the first."""
    node = items[0]
    for item in items[1:]:
        node = (node, item)
    return node


def _pairwise(m: Pairwise, ids: list):
    """Pairwise(block, rule)'s tree over the leaves ids."""
    n = len(ids)
    if m.rule == "halving" and n <= m.block or m.rule == "numpy" and n < 8:
        return _chain(ids)
    if m.rule == "numpy" and n <= m.block:
        whole = n - n % 8
        lanes = [_chain(ids[j:whole:8]) for j in range(8)]
        while len(lanes) > 1:
            lanes = [(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        return _chain(lanes + ids[whole:])
    h = n // 2 - (n // 2 % 8 if m.rule == "numpy" else 0)
    return (_pairwise(m, ids[:h]), _pairwise(m, ids[h:]))


def _block_fma(m: BlockFMA, K: int):
    """BlockFMA's tree over K products with the accumulator C as leaf K."""
    c, width = K, m.k or m.n
    for i0 in range(0, K, width):
        blocks = [[i0 + int(j) for j in cols] for cols in m.blocks(min(width, K - i0))]
        if m.accumulator == "aligned":  # the blocks' exact sums (cut, not rounded) and C:
            c = (c, *(j for b in blocks for j in b))  # one rounding, one node
            continue
        acc = c if m.accumulator == "first" else None
        for block in blocks:
            if m.block_sum == "pairwise":
                c = (c, _pairwise(Pairwise(block=1), block))
            elif not m.include_accumulator:
                c = (c, tuple(block))
            else:
                acc = tuple(block) if acc is None else (acc, *block)
        if m.include_accumulator:
            c = acc if m.accumulator == "first" else (acc, c)
    return c


def summation_tree(model: Model, K: int, accumulator: bool = False):
    """The canonical tree in which model adds K terms; with accumulator, a matrix unit's C is
    leaf K (a BlockFMA's running accumulator; for other models it is added last)."""
    if K < 1:
        raise ValueError(f"a summation tree needs K >= 1 terms, got {K}")
    if isinstance(model, BlockFMA):
        tree = _block_fma(model, K)
        return canonical(tree if accumulator else _drop(tree, K))
    if isinstance(model, Exact):
        tree = tuple(range(K))
    elif isinstance(model, Sequential):
        tree = _chain(list(model.indices(K)))
    elif isinstance(model, Pairwise):
        tree = _pairwise(model, list(range(K)))
    elif isinstance(model, Chunked):
        parts = [_shift(summation_tree(model.inner, min(model.chunk, K - k0)), k0)
                 for k0 in range(0, K, model.chunk)]
        tree = _substitute(summation_tree(model.outer, len(parts)), parts)
    elif isinstance(model, Tree):
        if model.size != K:
            raise ValueError(f"this Tree adds {model.size} terms, not {K}")
        tree = model.order
    else:
        raise ValueError(f"expected an accumulation model, got {model!r}")
    return canonical((tree, K) if accumulator else tree)


def _drop(node, leaf: int):
    """node without the given leaf (a BlockFMA's C when there is none)."""
    if isinstance(node, int):
        return node
    kids = tuple(_drop(c, leaf) for c in node if c != leaf)
    return kids


def _shift(node, by: int):
    return node + by if isinstance(node, int) else tuple(_shift(c, by) for c in node)


def _substitute(node, parts: list):
    return parts[node] if isinstance(node, int) else tuple(_substitute(c, parts) for c in node)
