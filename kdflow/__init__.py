"""kdflow: Hinton-style knowledge distillation on MNIST, tracked with MLflow and swept with Ray Tune.

The package is split by concern; each module is short enough to read at once:

- ``config``: every hyperparameter, its default (the original kdtf recipe) and its validation.
- ``data``: MNIST and Fashion-MNIST from checked sources, split as the original.
- ``models``: the teacher CNN and the softmax-regression student.
- ``losses``: the teacher loss at temperature T and the distillation losses.
- ``training``: the training loop with evaluation and best-validation restore.
- ``tracking``: MLflow runs, parameters, datasets, teacher lookup and failures.
- ``registry``: the pyfunc model, registration and the ``champion`` alias.
- ``results``: the kdtf results table regenerated from the tracked runs.
- ``sweeps``: temperature and seed trials over a Ray cluster with Ray Tune.
- ``jobs``: the teacher, student, distill, sweep and report jobs the entry points call.
- ``predict``: image files to MNIST digits and answers from a registered model.
"""
