"""
Which tensors of a checkpoint do not fit the model, and why.

Fine-tuning a released model on another dataset changes the number of classes, and may change the number of
queries: the class head and the query embeddings then have other shapes than in the checkpoint. The
checkpointer leaves such tensors at their fresh initial values and loads everything else; this module names
each skipped tensor with its shapes and the reason, so the log says exactly what starts fresh.
"""
# Tensors whose first dimension is the number of classes + 1 ("no object") ...
CLASS_TENSORS = ("predictor.class_embed.weight", "predictor.class_embed.bias", "criterion.empty_weight")
# ... and the number of queries.
QUERY_TENSORS = ("predictor.query_feat.weight", "predictor.query_embed.weight")


def explain_shape_mismatch(name, shape_checkpoint, shape_model):
    """
    ``(expected, reason)`` for a tensor ``name`` of shape ``shape_checkpoint`` in the checkpoint and
    ``shape_model`` in the model: ``expected`` when fine-tuning to other classes or queries explains it.
    """
    shapes = f"shape {tuple(shape_checkpoint)} in the checkpoint, {tuple(shape_model)} in the model"
    same_but_first = len(shape_checkpoint) == len(shape_model) and shape_checkpoint[1:] == shape_model[1:]
    if same_but_first and name.endswith(CLASS_TENSORS):
        return True, (
            f"{shapes}: {shape_checkpoint[0] - 1} classes in the checkpoint, {shape_model[0] - 1} in the model "
            "(MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
        )
    if same_but_first and name.endswith(QUERY_TENSORS):
        return True, (
            f"{shapes}: {shape_checkpoint[0]} queries in the checkpoint, {shape_model[0]} in the model "
            "(MODEL.MASK_FORMER.NUM_OBJECT_QUERIES)"
        )
    return False, f"{shapes}: the checkpoint is of another architecture; check the config against it"


def log_skipped_tensors(logger, incorrect_shapes, num_model_tensors):
    """Log every tensor of ``incorrect_shapes`` (name, checkpoint shape, model shape) that starts fresh."""
    if not incorrect_shapes:
        return
    for name, shape_checkpoint, shape_model in incorrect_shapes:
        expected, reason = explain_shape_mismatch(name, shape_checkpoint, shape_model)
        log = logger.info if expected else logger.warning
        log(f"Not loaded, starts fresh: {name}: {reason}")
    logger.info(
        f"{len(incorrect_shapes)} of the model's {num_model_tensors} tensors start fresh (shapes above); "
        "the others that the checkpoint holds are loaded"
    )
