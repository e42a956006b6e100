"""What the Numba IR and machine-code tests look for: a fast-math flag on a float instruction in
LLVM IR, and an x86 fused multiply-add instruction in the assembly. Private to the tests."""
import re

FAST_MATH_FLAG = re.compile(r"= f(add|sub|mul|div|neg|cmp) (fast|contract|reassoc|afn|arcp|nnan|ninf|nsz)\b")
FUSED_ASM = re.compile(r"\bv?f(n)?m(add|sub)(132|213|231)?[sp]s\b")
