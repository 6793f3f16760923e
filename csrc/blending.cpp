#include "blending.h"

void register_blending(pybind11::module_& m) {}
