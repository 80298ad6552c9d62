from . import translation_kd  # noqa
