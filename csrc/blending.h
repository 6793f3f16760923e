// Segment-restartable greedy blending-index builder (see csrc/blending.cpp).
// Plain pybind11 + numpy (no torch headers), so this unit compiles in seconds.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

void register_blending(pybind11::module_& m);
