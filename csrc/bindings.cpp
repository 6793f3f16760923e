// Python bindings of megagrape._C: one module, each csrc/ unit registers its functions.
#include <torch/extension.h>

#include "blending.h"
#include "gram.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megagrape C++/CUDA kernels: live-mixture blending builder and sharded gradient Gram";
  register_blending(m);
  register_gram(m);
}
