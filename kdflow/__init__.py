"""kdflow: Hinton-style knowledge distillation on MNIST, tracked with MLflow and swept with Ray Tune.

The package is split by concern into layers; a module imports only from layers below its own
(tests/test_layers.py enforces it):

- ``cli``: the command line of every entry point and ``kdflow-predict``: parse, run, message, exit status.
- ``sweeps``: an experiment's grid of trials over a Ray cluster with Ray Tune, each a tracked run.
  ``experiments``: experiment files (params, grid, expected results), their overrides and record.
- ``trials``: a sweep's runs on Ray Tune. ``runs``: one job inside one tracked MLflow run: start
  and end, name, description, results table. ``liveness``: ending runs whose process is gone.
- ``cards``: the model card of every registered student version, from its run and its table cell.
- ``jobs``: the teacher, student and distill training jobs. ``results``: the kdtf results table
  regenerated from the tracked runs. ``checks``: expected cells against those tables.
  ``predict``: image files to digits and a model's answers.
- ``tracking``: what a run stores and its reuse key. ``registry``: the pyfunc model, registration
  and the ``champion`` alias. ``store``: the tracking store checked and set up.
- ``config``: every hyperparameter, its default (the original kdtf recipe) and its validation.
  ``training``: the training loop with evaluation and best-validation restore.
- ``variants``: every network, loss, initialiser, recipe and dataset, chosen by name.
- ``losses``: the teacher loss at temperature T and the distillation losses. ``models``: the
  teacher CNN and the students: softmax regression and Hinton et al.'s 800-800 MLP.
- ``data``: MNIST and Fashion-MNIST from checked sources. ``precision``: the number formats.
  ``quiet``: the libraries' start-up noise held back, unless ``KDFLOW_VERBOSE`` is set.
"""
