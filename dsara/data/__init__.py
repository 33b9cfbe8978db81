"""Datasets in memory (`datasets`: CIFAR-10/100, SVHN, image folders, synthetic, cifar10-16),
seeded class-stratified splits (`split`) and the batch loader (`loader`)."""
