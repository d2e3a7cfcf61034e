/* qjc_engine.h: the C ABI of a qjc cuda artifact's engine library (cuda/libqjc_engine.so).
 *
 * An artifact directory holds manifest.json, weights.safetensors and cuda/libqjc_engine.so; the
 * library carries the model's kernels and its host engine and needs only the CUDA driver. A C or
 * C++ program uses it without Python:
 *
 *     qjc_engine* e;
 *     if (qjc_engine_create("model.qjc", &e) != 0) { fprintf(stderr, "%s\n", qjc_engine_last_error()); ... }
 *     const void* inputs[] = {d_ids};            // device pointers, contiguous, signature order
 *     const int64_t ids_shape[] = {1, 128};
 *     const int64_t* shapes[] = {ids_shape};
 *     int64_t dims[8]; int rank;
 *     qjc_engine_output_shape(e, 0, shapes, dims, &rank);   // for symbolic dims
 *     void* outputs[] = {d_out};                 // caller-allocated, contiguous
 *     qjc_engine_run(e, inputs, shapes, outputs, stream);   // asynchronous on `stream`
 *     qjc_engine_destroy(e);
 *
 * Every function returning int returns 0 on success and nonzero on failure, with the reason in
 * qjc_engine_last_error() (per thread). Inputs and outputs have the dtypes and shapes of the
 * manifest's signature. The first run for a new input shape plans the memory arena and, with
 * CUDA graphs on, captures the forward into a graph that later runs with that shape replay.
 */
#ifndef QJC_ENGINE_H
#define QJC_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QJC_ENGINE_ABI_VERSION 1

typedef struct qjc_engine qjc_engine;
/* A cudaStream_t; 0 (the legacy default stream) is allowed. */
typedef void* qjc_stream;

/* The message of the last failed call on this thread ("" if none). */
const char* qjc_engine_last_error(void);
int qjc_engine_abi_version(void);

/* Load the artifact at artifact_dir (weights.safetensors) onto the current CUDA device. Fails if
 * there is no CUDA driver or GPU, or if the library holds no machine code for the GPU's arch. */
int qjc_engine_create(const char* artifact_dir, qjc_engine** out);
void qjc_engine_destroy(qjc_engine* engine);

int qjc_engine_num_inputs(const qjc_engine* engine);
int qjc_engine_num_outputs(const qjc_engine* engine);

/* Shape of output `index` for inputs of the given shapes (one array of dims per input). */
int qjc_engine_output_shape(qjc_engine* engine, int index, const int64_t* const* input_shapes, int64_t* dims,
                            int* rank);

/* Run the forward on `stream`: inputs and outputs are device pointers in signature order. */
int qjc_engine_run(qjc_engine* engine, const void* const* inputs, const int64_t* const* shapes,
                   void* const* outputs, qjc_stream stream);

/* CUDA graph capture and replay per input shape (on by default if the artifact was built so). */
int qjc_engine_set_cuda_graphs(qjc_engine* engine, int enabled);

/* Time `iters` runs after `warmup` runs with CUDA events; times_ms receives one entry per run. */
int qjc_engine_benchmark(qjc_engine* engine, const void* const* inputs, const int64_t* const* shapes,
                         void* const* outputs, qjc_stream stream, int warmup, int iters, float* times_ms);

/* Bytes of device memory the arena holds now (grows with the largest shape seen). */
int64_t qjc_engine_arena_bytes(const qjc_engine* engine);

/* ---- helpers so a runtime needs no other CUDA library ------------------------------------------ */
/* Compute capability of the current device and the number of devices. */
int qjc_device_info(int* major, int* minor, int* device_count);
/* Comma-separated archs this library has machine code for, e.g. "sm_80,sm_90a". */
const char* qjc_compiled_archs(void);
int qjc_alloc(size_t bytes, void** out);
int qjc_free(void* ptr);
int qjc_memcpy_htod(void* dst, const void* src, size_t bytes, qjc_stream stream);
int qjc_memcpy_dtoh(void* dst, const void* src, size_t bytes, qjc_stream stream);
int qjc_stream_synchronize(qjc_stream stream);

#ifdef __cplusplus
}
#endif
#endif /* QJC_ENGINE_H */
