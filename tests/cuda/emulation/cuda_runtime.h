// The CUDA runtime under the CPU emulation (see emulation.h).
#pragma once
#include "emulation.h"
