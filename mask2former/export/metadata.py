"""
What an exported file records about the config it was exported from, and the check that a config matches it.

The network's function is fixed by ``MODEL.*`` (less the weights' location, the device and the test-time
post-processing switches) and ``INPUT.FORMAT``; these keys and their values go into the file, with their SHA-256
fingerprint, so that a predictor built from another config fails with the differing keys instead of returning
wrong outputs.
"""
import hashlib
import json

FORMAT_VERSION = 1
# Keys that do not change what the exported network computes.
_IGNORED = ("MODEL.WEIGHTS", "MODEL.WEIGHTS_MD5_CHECK", "MODEL.DEVICE", "MODEL.MASK_FORMER.TEST.")


def network_config(cfg):
    """The config's keys that fix the exported network, flattened to {"MODEL.X.Y": JSON value}."""
    flat = {}

    def visit(prefix, node):
        for key, value in node.items():
            name = f"{prefix}.{key}"
            if isinstance(value, dict):
                visit(name, value)
            elif not any(name == k or (k.endswith(".") and name.startswith(k)) for k in _IGNORED):
                flat[name] = list(value) if isinstance(value, tuple) else value

    visit("MODEL", cfg.MODEL)
    flat["INPUT.FORMAT"] = cfg.INPUT.FORMAT
    # Round-trip through JSON so that values compare equal to the ones read back from a file.
    return json.loads(json.dumps(flat, sort_keys=True))


def fingerprint(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def make_metadata(cfg, size_divisibility, file_format, opset=None):
    config = network_config(cfg)
    return {
        "format_version": FORMAT_VERSION,
        "format": file_format,
        "opset": opset,
        "size_divisibility": size_divisibility,
        "fingerprint": fingerprint(config),
        "network_config": config,
    }


def check_config(metadata, cfg, path):
    """Raise ValueError naming the differing keys when ``cfg`` is not the config ``metadata`` was exported from."""
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: exported file format version {metadata.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}; export the model again with tools/export_model.py"
        )
    config = network_config(cfg)
    if fingerprint(config) == metadata["fingerprint"]:
        return
    stored = metadata["network_config"]
    differing = sorted(k for k in set(config) | set(stored) if config.get(k, "<missing>") != stored.get(k, "<missing>"))
    details = "; ".join(
        f"{k}: file {stored.get(k, '<missing>')!r}, config {config.get(k, '<missing>')!r}" for k in differing[:8]
    )
    more = f" (and {len(differing) - 8} more)" if len(differing) > 8 else ""
    raise ValueError(
        f"{path} was exported from another config: {details}{more}. Use the config it was exported from, or "
        "export again with this config (tools/export_model.py)"
    )
