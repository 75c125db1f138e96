"""Split lists shipped with the package (read with ``importlib.resources``).

* ``Places_LT_train.txt.gz``, ``Places_LT_test.txt.gz``: the Places-LT lists
  (facebookresearch/classifier-balancing @ f162adef, byte-identical before gzip):
  ``train/<category>/<file>.jpg <label>`` (62,500 lines) and
  ``val/<category>/Places365_val_<n>.jpg <label>`` (36,500 lines, from Places365 val).
* ``ImageNet_LT_train_cls_freq.json``: the 1000 ImageNet-LT per-class training counts
  (JiahuiKChen/LT-classification @ 855e0f88, ``cls_freq/ImageNet_LT_train.json``), used
  to cross-check the counts read from the data.
"""
