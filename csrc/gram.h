// Fused multi-vector dot products over sharded gradient buffers (see csrc/gram.cpp).
//
// _C.gram(a, b) -> float64 [K, N]: a holds K vectors and b holds N vectors, each given as
// the same list of P "slots" (one tensor per parameter shard or flat ZeRO partition; slot j
// has the same numel in every vector). Entry (k, n) is sum_j <a[k][j], b[n][j]>, the local
// partial of the Gram matrix that the caller then all-reduces across ranks.
#pragma once
#include <torch/extension.h>

void register_gram(pybind11::module_& m);
