"""Constants shared by several test modules (tests/ is on sys.path under pytest)."""

# A genotype of the tiny space (2 nodes per cell, cell types accurate/reduce/robust).
TINY_GENOTYPE = (
    "Genotype(accurate=[('sep_conv_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 0), "
    "('sep_conv_3x3', 2)], accurate_concat=[2, 3], reduce=[('max_pool_3x3', 0), "
    "('sep_conv_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3], "
    "robust=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 2)], "
    "robust_concat=[2, 3])")
