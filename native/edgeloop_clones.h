/* EDGELOOP_CLONES: compile a loop for AVX-512 and AVX2 too and pick one at load time.

   On x86-64 Linux with GCC >= 12 a function marked EDGELOOP_CLONES gets x86-64-v4 and
   x86-64-v3 variants beside the default one (the dynamic loader chooses by CPU), so the
   wheel runs everywhere and still uses wide vectors where they exist.  Every variant does
   the same integer and IEEE operations (no FMA: the modules that need bit-identical results
   build with -ffp-contract=off), so results do not depend on the variant.  Elsewhere, or
   with EDGELOOP_NO_CLONES defined, the macro is empty. */
#ifndef EDGELOOP_CLONES_H
#define EDGELOOP_CLONES_H
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 \
    && !defined(EDGELOOP_NO_CLONES)
#define EDGELOOP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EDGELOOP_CLONES
#endif
#endif
