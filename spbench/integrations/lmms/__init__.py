"""lmms-eval plugin: the stock Qwen2.5-VL model with spbench attention in its language model.

Registration goes through lmms-eval's model entry-point group
``lmms_eval.models`` (lmms-eval >= 0.6; the ``LMMS_EVAL_PLUGINS`` variable is
deprecated there). spbench's pyproject declares::

    [project.entry-points."lmms_eval.models"]
    spbench_qwen2_5_vl = "spbench.integrations.lmms:manifests"

This module stays import-light (lmms-eval loads it while building its model
registry); the model classes live in :mod:`spbench.integrations.lmms.model`.

Use from lmms-eval directly::

    python -m lmms_eval --model spbench_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=xattention,budget=0.35,stride=16 \\
        --tasks videomme --batch_size 1

``method`` is required; ``budget`` and every other argument that is not one
of the stock model's are method knobs. All of them are in ``model_args``,
which is what lmms-eval's response cache fingerprints (model name + parsed
model_args), so a sparse run never reads a dense run's cached answers or the
reverse.
"""

from __future__ import annotations

MODEL_ID = "spbench_qwen2_5_vl"
CHAT_CLASS = "spbench.integrations.lmms.model.SparseQwen2_5_VL"
SIMPLE_CLASS = "spbench.integrations.lmms.model.SparseQwen2_5_VLSimple"


def manifests():
    """The entry-point payload: one ModelManifest (lmms-eval imports the classes lazily)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS, simple_class_path=SIMPLE_CLASS)]
