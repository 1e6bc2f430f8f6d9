"""Serving: onnxruntime + numpy only. One runtime behind both front ends (REST now, gRPC too).

    store.ModelStore   follows the newest complete bundle, verifies and warms it, swaps atomically
    runtime.Runtime    one loaded bundle: act / value / imagine on numpy arrays
    inputs             observation and plan checks shared by every front end
    app                the FastAPI app
"""
