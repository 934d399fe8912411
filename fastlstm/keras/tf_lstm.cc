// The fused LSTM's compiled targets (fastlstm/keras/xla_lstm.py) as two TensorFlow CPU operations,
// so that a TensorFlow step calls the kernels directly rather than through tf.numpy_function.
//
// The targets are Numba cfuncs that speak XLA's FFI C API (xla/ffi/api/c_api.h); each operation
// describes its tensors in that API's call frame and calls its target, which Python hands over
// once per process (fastlstm_set_target). Shapes: x [batch, time, features], kernel
// [features, 4 * units], recurrent_kernel [units, 4 * units], bias [4 * units], states
// [batch, units]; outputs [batch, time, units] with return_sequences, else [batch, units].
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

// The parts of XLA's FFI call frame that the targets read, in that API's layout.
struct FfiBuffer {
  size_t struct_size;
  void* extension_start;
  int dtype;
  void* data;
  int64_t rank;
  const int64_t* dims;
};

struct FfiBuffers {  // XLA_FFI_Args and XLA_FFI_Rets
  size_t struct_size;
  void* extension_start;
  int64_t size;
  int* types;
  void** items;
};

struct FfiAttributes {
  size_t struct_size;
  void* extension_start;
  int64_t size;
  void* types;
  void* names;
  void* items;
};

struct FfiCallFrame {
  size_t struct_size;
  void* extension_start;
  void* api;
  void* context;
  int stage;
  FfiBuffers args;
  FfiBuffers rets;
  FfiAttributes attrs;
  void* future;
};

constexpr int kExecute = 3;  // XLA_FFI_ExecutionStage_EXECUTE
constexpr int kInt32 = 4, kFloat32 = 11, kFloat64 = 12;  // XLA_FFI_DataType

using Target = void* (*)(FfiCallFrame*);

// [direction][dtype]: direction 0 forward, 1 backward; dtype 0 float32, 1 float64.
std::atomic<Target> targets[2][2];

// The buffers of one call, kept alive while the target runs.
class Frame {
 public:
  void Add(std::vector<FfiBuffer>* buffers, int dtype, void* data, const tensorflow::TensorShape& shape) {
    std::vector<int64_t> dims(shape.dims());
    for (int k = 0; k < shape.dims(); ++k) dims[k] = shape.dim_size(k);
    dims_.push_back(std::move(dims));
    buffers->push_back({sizeof(FfiBuffer), nullptr, dtype, data, shape.dims(), dims_.back().data()});
  }

  void Call(Target target) {
    // The buffers are final now: only now are the pointers to them taken.
    std::vector<void*> args, rets;
    for (auto& b : args_) args.push_back(&b);
    for (auto& b : rets_) rets.push_back(&b);
    FfiCallFrame frame{};
    frame.struct_size = sizeof(FfiCallFrame);
    frame.stage = kExecute;
    frame.args = {sizeof(FfiBuffers), nullptr, static_cast<int64_t>(args.size()), nullptr, args.data()};
    frame.rets = {sizeof(FfiBuffers), nullptr, static_cast<int64_t>(rets.size()), nullptr, rets.data()};
    frame.attrs.struct_size = sizeof(FfiAttributes);
    target(&frame);
  }

  std::vector<FfiBuffer> args_, rets_;

 private:
  std::vector<std::vector<int64_t>> dims_;
};

template <typename T>
constexpr int FfiDtype() {
  return std::is_same<T, float>::value ? kFloat32 : kFloat64;
}

// kDirection: 0 the forward, 1 the backward.
template <typename T, int kDirection>
class FusedLstmOp : public tensorflow::OpKernel {
 public:
  explicit FusedLstmOp(tensorflow::OpKernelConstruction* context) : OpKernel(context) {
    bool go_backwards, return_sequences;
    OP_REQUIRES_OK(context, context->GetAttr("activation", &options_[0]));
    OP_REQUIRES_OK(context, context->GetAttr("recurrent_activation", &options_[1]));
    OP_REQUIRES_OK(context, context->GetAttr("go_backwards", &go_backwards));
    OP_REQUIRES_OK(context, context->GetAttr("return_sequences", &return_sequences));
    options_[2] = go_backwards;
    options_[3] = return_sequences;
  }

  void Compute(tensorflow::OpKernelContext* context) override {
    Target target = targets[kDirection][std::is_same<T, double>::value].load();
    OP_REQUIRES(context, target != nullptr,
                tensorflow::errors::FailedPrecondition(
                    "fastlstm: this process has no compiled target for ", name(),
                    "; build the operation through fastlstm.keras, which compiles it"));
    const tensorflow::TensorShape& x = context->input(0).shape();
    const int64_t batch = x.dim_size(0), time = x.dim_size(1), features = x.dim_size(2);
    const int64_t units = context->input(2).dim_size(0);
    Frame frame;
    for (int i = 0; i < context->num_inputs(); ++i) {
      const tensorflow::Tensor& input = context->input(i);
      frame.Add(&frame.args_, FfiDtype<T>(), const_cast<char*>(input.tensor_data().data()), input.shape());
    }
    int32_t options[4] = {options_[0], options_[1], options_[2], options_[3]};
    frame.Add(&frame.args_, kInt32, options, tensorflow::TensorShape({4}));
    for (const tensorflow::TensorShape& shape : ResultShapes(batch, time, features, units)) {
      tensorflow::Tensor* result = nullptr;
      OP_REQUIRES_OK(context, context->allocate_output(static_cast<int>(frame.rets_.size()), shape, &result));
      frame.Add(&frame.rets_, FfiDtype<T>(), const_cast<char*>(result->tensor_data().data()), shape);
    }
    frame.Call(target);
  }

 private:
  std::vector<tensorflow::TensorShape> ResultShapes(int64_t batch, int64_t time, int64_t features,
                                                    int64_t units) const {
    if (kDirection == 1) {
      return {{batch, time, features}, {features, 4 * units}, {units, 4 * units}, {4 * units}, {batch, units},
              {batch, units}};
    }
    tensorflow::TensorShape outputs = options_[3] ? tensorflow::TensorShape({batch, time, units})
                                                  : tensorflow::TensorShape({batch, units});
    return {outputs, {batch, units}, {batch, units}, {batch, time + 1, units}, {batch, time + 1, units},
            {batch, time, 4 * units}, {batch, time, units}};
  }

  int32_t options_[4];
};

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

tensorflow::Status ForwardShapes(InferenceContext* c) {
  ShapeHandle x, recurrent_kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &recurrent_kernel));
  DimensionHandle batch = c->Dim(x, 0), time = c->Dim(x, 1), units = c->Dim(recurrent_kernel, 0), steps, gates;
  TF_RETURN_IF_ERROR(c->Add(time, 1, &steps));
  TF_RETURN_IF_ERROR(c->Multiply(units, 4, &gates));
  bool return_sequences;
  TF_RETURN_IF_ERROR(c->GetAttr("return_sequences", &return_sequences));
  c->set_output(0, return_sequences ? c->MakeShape({batch, time, units}) : c->MakeShape({batch, units}));
  c->set_output(1, c->MakeShape({batch, units}));
  c->set_output(2, c->MakeShape({batch, units}));
  c->set_output(3, c->MakeShape({batch, steps, units}));
  c->set_output(4, c->MakeShape({batch, steps, units}));
  c->set_output(5, c->MakeShape({batch, time, gates}));
  c->set_output(6, c->MakeShape({batch, time, units}));
  return tensorflow::OkStatus();
}

tensorflow::Status BackwardShapes(InferenceContext* c) {
  for (int i = 0; i < 3; ++i) c->set_output(i, c->input(i));
  ShapeHandle x, recurrent_kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &recurrent_kernel));
  DimensionHandle gates;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(recurrent_kernel, 0), 4, &gates));
  c->set_output(3, c->MakeShape({gates}));
  c->set_output(4, c->MakeShape({c->Dim(x, 0), c->Dim(recurrent_kernel, 0)}));
  c->set_output(5, c->MakeShape({c->Dim(x, 0), c->Dim(recurrent_kernel, 0)}));
  return tensorflow::OkStatus();
}

}  // namespace

#define FASTLSTM_OPTIONS                                                                          \
  Attr("T: {float, double}")                                                                      \
      .Attr("activation: int")                                                                    \
      .Attr("recurrent_activation: int")                                                          \
      .Attr("go_backwards: bool")                                                                 \
      .Attr("return_sequences: bool")

REGISTER_OP("FastlstmForward")
    .Input("x: T")
    .Input("kernel: T")
    .Input("recurrent_kernel: T")
    .Input("bias: T")
    .Input("h0: T")
    .Input("c0: T")
    .Output("outputs: T")
    .Output("h_final: T")
    .Output("c_final: T")
    .Output("h: T")
    .Output("c: T")
    .Output("gates: T")
    .Output("act_c: T")
    .FASTLSTM_OPTIONS
    .SetShapeFn(ForwardShapes);

REGISTER_OP("FastlstmBackward")
    .Input("x: T")
    .Input("kernel: T")
    .Input("recurrent_kernel: T")
    .Input("h: T")
    .Input("c: T")
    .Input("gates: T")
    .Input("act_c: T")
    .Input("d_outputs: T")
    .Input("d_h_final: T")
    .Input("d_c_final: T")
    .Output("dx: T")
    .Output("dkernel: T")
    .Output("drecurrent_kernel: T")
    .Output("dbias: T")
    .Output("dh0: T")
    .Output("dc0: T")
    .FASTLSTM_OPTIONS
    .SetShapeFn(BackwardShapes);

#define FASTLSTM_KERNELS(T)                                                                               \
  REGISTER_KERNEL_BUILDER(Name("FastlstmForward").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),  \
                          FusedLstmOp<T, 0>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("FastlstmBackward").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          FusedLstmOp<T, 1>);
FASTLSTM_KERNELS(float)
FASTLSTM_KERNELS(double)

// Hands the operations the address of a compiled target: direction 0 forward, 1 backward; dtype
// 0 float32, 1 float64.
extern "C" void fastlstm_set_target(int direction, int dtype, void* address) {
  targets[direction][dtype].store(reinterpret_cast<Target>(address));
}
