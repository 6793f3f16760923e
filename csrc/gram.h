// Fused multi-vector dot products over sharded gradient buffers (see csrc/gram.cpp).
#pragma once
#include <torch/extension.h>

void register_gram(pybind11::module_& m);
