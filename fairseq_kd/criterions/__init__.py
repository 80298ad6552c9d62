from . import label_smoothed_cross_entropy_with_kd  # noqa
