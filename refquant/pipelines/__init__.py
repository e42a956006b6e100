"""Whole-file pipelines, above dispatch (tests/test_layering.py holds the direction):

    recipes        llama.cpp's file types: quantize_model, dequantize_model (the one GGUF dequantizer)
    convert        one ggml type for every quantizable weight of a GGUF model
    hf_quantize    Hugging Face checkpoints quantized (RTN, GPTQ, AWQ, SmoothQuant; packed layouts)
    hf_dequantize  quantized checkpoints read back into float weights
    fold           AWQ / SmoothQuant scales folded into the weights, for every pipeline above
    quality        the quality table (`refquant eval`)
    scale          a whole-file job's tasks on Dask
    ct_vectors     golden vectors of compressed-tensors' presets
"""
