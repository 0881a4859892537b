"""Mask AP on panoptic datasets whose thing classes share one contiguous id space with the stuff classes."""
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Instances

__all__ = ["InstanceSegEvaluator"]


class InstanceSegEvaluator(COCOEvaluator):
    """
    COCOEvaluator for datasets such as ADE20K and Mapillary Vistas panoptic, where a model's classes are all the
    dataset's classes and the thing classes are some of them (contiguous ids e.g. {7, 8, 10, ...} of 0..149).
    COCOEvaluator requires the thing ids to be exactly 0..T-1; here each predicted thing class is first replaced by
    its rank among the thing classes, and the evaluator sees the dataset's thing ids mapped to those ranks. The
    predictions reach the instance json with their dataset category ids, as in COCOEvaluator.

    Arguments are COCOEvaluator's, except that ``use_fast_impl`` defaults to False: detectron2's fast COCOeval
    needs its compiled ops, which this project does not build (detectron2 would fall back with a warning).
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, use_fast_impl=False, **kwargs):
        super().__init__(dataset_name, tasks, distributed, output_dir, use_fast_impl=use_fast_impl, **kwargs)
        thing_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if not thing_map:
            raise ValueError(
                f"InstanceSegEvaluator needs 'thing_dataset_id_to_contiguous_id' in the metadata of {dataset_name!r}"
            )
        self._rank_of_contiguous_id = {c: rank for rank, c in enumerate(sorted(thing_map.values()))}
        metadata = self._metadata.as_dict()
        metadata["thing_dataset_id_to_contiguous_id"] = {
            dataset_id: self._rank_of_contiguous_id[c] for dataset_id, c in thing_map.items()
        }
        self._metadata = Metadata(name=metadata.pop("name")).set(**metadata)

    def process(self, inputs, outputs):
        super().process(inputs, [self._with_thing_ranks(output) for output in outputs])

    def _with_thing_ranks(self, output):
        """``output`` with its instances' classes replaced by their ranks among the thing classes."""
        if "instances" not in output:
            return output
        instances = output["instances"].to(self._cpu_device)
        classes = instances.pred_classes.tolist()
        not_things = sorted({c for c in classes if c not in self._rank_of_contiguous_id})
        if not_things:
            raise ValueError(
                f"instances of classes {not_things}, which are not thing classes of {self._metadata.name!r}; "
                "instance outputs of a panoptic dataset must be restricted to its thing classes "
                "(MODEL.MASK_FORMER.TEST.PANOPTIC_ON True does that)"
            )
        ranked = Instances(instances.image_size, **instances.get_fields())
        ranked.pred_classes = instances.pred_classes.new_tensor([self._rank_of_contiguous_id[c] for c in classes])
        return {**output, "instances": ranked}
