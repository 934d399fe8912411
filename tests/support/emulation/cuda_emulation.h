// Runs CUDA kernel sources unchanged on the CPU: one std::thread per CUDA thread of a block, a
// std::barrier for __syncthreads, blocks one after another with fresh, poisoned (NaN-filled)
// dynamic shared memory, so a read of shared memory no thread of the block wrote shows up. A
// cooperative launch runs every block of the grid at once, each with its own shared memory and
// barrier, as a GPU does when the grid's blocks are all resident; device atomics are C++ atomics.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdlib>
#include <cstddef>
#include <cstring>
#include <deque>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::tanh;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float4 {
    float x, y, z, w;
};
struct double2 {
    double x, y;
};

namespace emulation {
inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local unsigned char* dynamic_shared = nullptr;
}  // namespace emulation

#define threadIdx (emulation::thread_index)
#define blockIdx (emulation::block_index)
#define blockDim (emulation::block_dim)
#define gridDim (emulation::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define FASTLSTM_DYNAMIC_SHARED(name) unsigned char* name = emulation::dynamic_shared

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }  // a GPU fails the launch; here the process ends
inline unsigned atomicAdd(unsigned* address, unsigned value) { return std::atomic_ref(*address).fetch_add(value); }
inline unsigned atomicExch(unsigned* address, unsigned value) { return std::atomic_ref(*address).exchange(value); }
template <typename T>
T __ldcg(const T* address) {
    return *address;
}

namespace emulation {

// kernel(args...) for every thread of every block; args[i] points at the i-th argument's value,
// as cuLaunchKernel's kernelParams.
template <typename... Params, std::size_t... I>
void call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<Params*>(args[I])...);
}

// The threads of block (bx, by, bz), started; they run the kernel with `shared` as the block's
// dynamic shared memory and `barrier` as its __syncthreads.
template <typename... Params>
void start_block(std::vector<std::thread>& pool, void (*kernel)(Params...), void** args, dim3 block, dim3 index,
                 unsigned char* shared, std::barrier<>* barrier) {
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([=] {
            thread_index = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
            block_index = index;
            dynamic_shared = shared;
            block_barrier = barrier;
            call(kernel, args, std::index_sequence_for<Params...>{});
        });
}

template <typename... Params>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, void** args) {
    grid_dim = grid;
    block_dim = block;
    std::vector<unsigned char> shared(shared_bytes);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::memset(shared.data(), 0xFF, shared.size());  // NaN in float and double
                std::barrier<> barrier(block.x * block.y * block.z);
                std::vector<std::thread> pool;
                start_block(pool, kernel, args, block, dim3{bx, by, bz}, shared.data(), &barrier);
                for (auto& thread : pool) thread.join();
            }
}

// A cooperative launch: every block at once.
template <typename... Params>
void launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, void** args) {
    grid_dim = grid;
    block_dim = block;
    const unsigned blocks = grid.x * grid.y * grid.z;
    std::vector<std::vector<unsigned char>> shared(blocks, std::vector<unsigned char>(shared_bytes, 0xFF));
    std::deque<std::barrier<>> barriers;  // a barrier cannot move, and a deque never moves its elements
    for (unsigned b = 0; b < blocks; ++b) barriers.emplace_back(block.x * block.y * block.z);
    std::vector<std::thread> pool;
    for (unsigned b = 0; b < blocks; ++b)
        start_block(pool, kernel, args, block, dim3{b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)},
                    shared[b].data(), &barriers[b]);
    for (auto& thread : pool) thread.join();
}

}  // namespace emulation
