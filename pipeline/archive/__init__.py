"""An archive as a library: rehydrate one image by key, verify every file.

    access.py  rehydrate by source key (or small-file URI), with the pair that made the file
    verify.py  `taid verify`: every row's files present and byte-exact
"""
