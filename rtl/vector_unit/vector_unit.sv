// SPDX-License-Identifier: Apache-2.0
// vector_unit: the device's fp32 vector operations on LANES lanes, bit for bit the golden
// model simulator/kernels.py (relu, alu("add", a, b), max_step):
//
//   op_i = 0  RELU  y = relu(a)      = np.maximum(a, +0.0)
//   op_i = 1  ADD   y = a + b        IEEE binary32, nearest even, subnormals kept
//                                    (rtl/common/fp32_add.sv; NaN out is 32'h7FC00000)
//   op_i = 2  MAX   y = max_step(a, b) = np.maximum(a, b)   (one max-pool step)
//   op_i = 3  reserved: y = +0.0
//
// np.maximum(a, b) per element is "a if a > b or a is NaN, else b", with the IEEE
// comparison (-0 == +0, nothing compares with NaN) and the chosen operand's bits returned
// unchanged, NaN payloads included (no quieting). So relu(-0.0) = +0.0, relu(NaN) = NaN
// with a's payload, max(-0, +0) = +0, max(+0, -0) = -0, max(a, NaN) = b's NaN and
// max(NaN, NaN) = a's NaN. RELU is MAX with b forced to +0.0.
//
// Timing: 1 register stage, latency 1 cycle (accepted at edge t, out_valid_o after edge
// t+1), throughput 1 vector per cycle; out_ready_i low stalls (combinational ready, no
// skid buffer). The adder is combinational in front of the output register.
//
// Layout: lane l of a_i, b_i and y_o is bits [32*l +: 32] (IEEE binary32).
module vector_unit #(
    parameter int LANES = 8,                 // fp32 lanes
    // derived
    localparam int WIDTH = LANES * 32        // bits of one vector
) (
    input  logic             clk_i,
    input  logic             rst_ni,         // synchronous, active low
    input  logic             in_valid_i,
    output logic             in_ready_o,
    input  logic [1:0]       op_i,           // 0 RELU, 1 ADD, 2 MAX, 3 reserved
    input  logic [WIDTH-1:0] a_i,
    input  logic [WIDTH-1:0] b_i,
    output logic             out_valid_o,
    input  logic             out_ready_i,
    output logic [WIDTH-1:0] y_o
);
  localparam logic [1:0] OP_RELU = 2'd0;
  localparam logic [1:0] OP_ADD  = 2'd1;
  localparam logic [1:0] OP_MAX  = 2'd2;

  // np.maximum(a, b): a if a > b (IEEE) or a is NaN, else b
  function automatic logic [31:0] maximum(input logic [31:0] a, input logic [31:0] b);
    logic a_nan, b_nan, both_zero, gt;
    a_nan     = (a[30:23] == 8'hFF) && (a[22:0] != 23'd0);
    b_nan     = (b[30:23] == 8'hFF) && (b[22:0] != 23'd0);
    both_zero = (a[30:0] == 31'd0) && (b[30:0] == 31'd0);
    if (both_zero)          gt = 1'b0;                     // -0 == +0
    else if (a[31] != b[31]) gt = !a[31];                   // the positive one is larger
    else if (!a[31])         gt = a[30:0] > b[30:0];        // both positive: magnitudes
    else                     gt = a[30:0] < b[30:0];        // both negative: reversed
    return (a_nan || (!b_nan && gt)) ? a : b;
  endfunction

  // one lane's result
  function automatic logic [31:0] lane_result(input logic [1:0] op, input logic [31:0] a,
                                              input logic [31:0] b, input logic [31:0] sum);
    case (op)
      OP_RELU: return maximum(a, 32'h0000_0000);
      OP_ADD:  return sum;
      OP_MAX:  return maximum(a, b);
      default: return 32'h0000_0000;
    endcase
  endfunction

  logic [WIDTH-1:0] sum_c, y_c;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    fp32_add u_add (
        .a_i  (a_i[32*l +: 32]),
        .b_i  (b_i[32*l +: 32]),
        .sum_o(sum_c[32*l +: 32])
    );
    assign y_c[32*l +: 32] = lane_result(op_i, a_i[32*l +: 32], b_i[32*l +: 32],
                                         sum_c[32*l +: 32]);
  end

  assign in_ready_o = !out_valid_o || out_ready_i;

  always_ff @(posedge clk_i) begin
    if (!rst_ni) begin
      out_valid_o <= 1'b0;
    end else if (in_ready_o) begin
      out_valid_o <= in_valid_i;
      if (in_valid_i) y_o <= y_c;
    end
  end
endmodule
