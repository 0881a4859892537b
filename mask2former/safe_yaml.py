"""
Loading config YAMLs without executing code from them.

detectron2's ``CfgNode.merge_from_file`` falls back to ``yaml.unsafe_load`` when a file holds a Python tag, so
a config with ``!!python/object/apply:os.system [...]`` runs that command. Importing ``mask2former`` replaces
``CfgNode.load_yaml_with_base`` (which ``merge_from_file`` and every ``_BASE_`` of the chain go through) with
:func:`load_yaml_with_base` below:

- ``!!python/object/apply:eval ["<expression>"]`` is accepted when the expression is plain arithmetic over
  numbers, lists, tuples and ``range`` (the original's configs compute ``INPUT.MIN_SIZE_TRAIN`` so); it is
  evaluated by walking its syntax tree, never by Python's ``eval``.
- Any other tag is refused while the file is parsed, before anything runs, with an :class:`UnsafeConfigError`
  naming the file, the line and the tag.
- A file the user trusts loads as detectron2 loads it (``yaml.unsafe_load``) inside :func:`trusted_config`
  (``get_maskformer2_cfg(..., trust_config=True)``, ``train_net.py --trust-config``).
"""
import ast
import contextlib
import contextvars
import logging
import operator
import os

import yaml
from detectron2.config import CfgNode

__all__ = ["UnsafeConfigError", "evaluate_expression", "load_yaml_with_base", "trusted_config"]

BASE_KEY = "_BASE_"
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
# Bounds that keep a hostile expression from exhausting memory or time.
MAX_RANGE = 100_000
MAX_EXPONENT = 64
MAX_INT_BITS = 4096
MAX_STEPS = 1_000_000

_TRUSTED = contextvars.ContextVar("mask2former_trusted_config", default=False)
logger = logging.getLogger(__name__)


class UnsafeConfigError(ValueError):
    """A config file holds a YAML tag that could run code; nothing from it was executed."""


@contextlib.contextmanager
def trusted_config():
    """Within this block, config files load with ``yaml.unsafe_load``: any Python tag in them runs."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _range(*args):
    if not all(isinstance(a, int) for a in args):
        raise ValueError("range() takes integers")
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise ValueError(f"range() of {len(values)} numbers (at most {MAX_RANGE})")
    return values


_FUNCTIONS = {
    "range": _range, "int": int, "float": float, "round": round, "abs": abs, "min": min, "max": max, "list": list,
    "tuple": tuple, "len": len,
}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"arithmetic on {type(value).__name__}, only numbers are allowed")
    return value


class _Evaluator:
    """Walks an expression's syntax tree, counting steps so that no expression runs for long."""

    def __init__(self):
        self.steps = 0

    def evaluate(self, node, names):
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ValueError(f"more than {MAX_STEPS} evaluation steps")
        if isinstance(node, ast.Expression):
            return self.evaluate(node.body, names)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.List):
            return [self.evaluate(e, names) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.evaluate(e, names) for e in node.elts)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"unknown name {node.id!r}")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = _number(self.evaluate(node.left, names)), _number(self.evaluate(node.right, names))
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} (at most {MAX_EXPONENT})")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
                raise ValueError(f"an integer of more than {MAX_INT_BITS} bits")
            return result
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](_number(self.evaluate(node.operand, names)))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                allowed = ", ".join(sorted(_FUNCTIONS))
                raise ValueError(f"call of {ast.unparse(node.func)!r}; only {allowed} are allowed")
            return _FUNCTIONS[node.func.id](*(self.evaluate(a, names) for a in node.args))
        if isinstance(node, ast.ListComp):
            return list(self.comprehend(node.elt, node.generators, names))
        raise ValueError(f"{type(node).__name__} ({ast.unparse(node)!r}) is not plain arithmetic")

    def comprehend(self, element, generators, names):
        if not generators:
            yield self.evaluate(element, names)
            return
        first, rest = generators[0], generators[1:]
        if not isinstance(first.target, ast.Name) or first.ifs or first.is_async:
            raise ValueError("only 'for <name> in <values>' comprehensions are allowed")
        values = self.evaluate(first.iter, names)
        if not isinstance(values, (list, tuple, range)):
            raise ValueError("a comprehension iterates over a list, tuple or range")
        for value in values:
            yield from self.comprehend(element, rest, {**names, first.target.id: value})


def evaluate_expression(text):
    """
    The value of ``text``, a Python expression of numbers, lists, tuples, arithmetic, list comprehensions and
    the functions range/int/float/round/abs/min/max/list/tuple/len. Anything else raises ``ValueError``;
    errors of the arithmetic itself (``1 / 0``) are raised as Python raises them.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a Python expression: {e.msg}") from None
    # The only names are those the expression binds itself (comprehension variables); no builtins.
    return _Evaluator().evaluate(tree, {})


class _SafeConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, plus the arithmetic ``eval`` tag; every other tag raises :class:`UnsafeConfigError`."""

    filename = "<config>"

    def _refuse(self, node, reason):
        line = node.start_mark.line + 1
        raise UnsafeConfigError(
            f"{self.filename}, line {line}: tag {node.tag!r} refused ({reason}); nothing from the file was run. "
            "Write the value plainly; or, if you trust this file and want its code to run, pass --trust-config "
            "to train_net.py (get_maskformer2_cfg(..., trust_config=True), or load it inside "
            "mask2former.safe_yaml.trusted_config())"
        )

    def construct_eval(self, node):
        args = self.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else None
        if not args or len(args) != 1 or not isinstance(args[0], str):
            self._refuse(node, "eval takes one string")
        try:
            return evaluate_expression(args[0])
        except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError) as e:
            self._refuse(node, f"{args[0]!r} is not plain arithmetic over lists, ranges and numbers: {e}")

    def construct_refused(self, node):
        self._refuse(node, "it could run code" if "python/" in (node.tag or "") else "unknown tag")


_SafeConfigLoader.add_constructor(EVAL_TAG, _SafeConfigLoader.construct_eval)
_SafeConfigLoader.add_constructor(None, _SafeConfigLoader.construct_refused)


def _load_one(cls, filename):
    with cls._open_cfg(filename) as f:
        if _TRUSTED.get():
            logger.warning(f"Loading config {filename} with yaml.unsafe_load: code in it runs (trusted).")
            return yaml.unsafe_load(f)
        loader = _SafeConfigLoader(f)
        loader.filename = str(filename)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()


def _merge_into(a, b):
    """Merge dict ``a`` into dict ``b`` recursively; ``a`` wins."""
    for key, value in a.items():
        if isinstance(value, dict) and key in b:
            if not isinstance(b[key], dict):
                raise KeyError(f"Cannot inherit key '{key}' from base!")
            _merge_into(value, b[key])
        else:
            b[key] = value


def load_yaml_with_base(cls, filename, allow_unsafe=False):
    """
    The dict of config file ``filename`` merged over its ``_BASE_`` files (paths relative to it, ``~``, or
    absolute/URL), each loaded as this module says. ``allow_unsafe`` is accepted for detectron2's signature
    and ignored: only :func:`trusted_config` lets code in a file run.
    """
    cfg = _load_one(cls, filename) or {}
    if BASE_KEY not in cfg:
        return cfg
    bases = cfg.pop(BASE_KEY)
    merged = {}
    for base in bases if isinstance(bases, list) else [bases]:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(filename), base)
        _merge_into(cls.load_yaml_with_base(base, allow_unsafe=allow_unsafe), merged)
    _merge_into(cfg, merged)
    return merged


def install():
    """Make detectron2's ``CfgNode.merge_from_file`` (and whoever calls it) load configs through this module."""
    CfgNode.load_yaml_with_base = classmethod(load_yaml_with_base)
