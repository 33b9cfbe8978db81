"""Attacks, all L-inf in [0, 1] pixel space: the threat model (`base`), FGSM / PGD (`gradient`),
AutoAttack (`autoattack`), the registry `dsara evaluate` reads by name (`registry`), and the seed
papers' attacks: the second-order Krylov attack (`krylov`), transfer attacks (`transfer`), AI-GAN
(`aigan`)."""
