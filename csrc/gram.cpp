#include "gram.h"

void register_gram(pybind11::module_& m) {}
