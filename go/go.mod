module cuda-engine/go

go 1.19
