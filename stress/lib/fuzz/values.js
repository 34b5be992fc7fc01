'use strict'
// Arbitraries of odd JS values for stress/fuzz.js (fast-check). Every generated value is wrapped
// in a `V { d, v }`: `v` the value handed to the addon, `d` a short, stable description used in
// progress lines and in the report of a failing case (a 1 MB string is described, not printed; a
// Proxy whose traps throw is never touched by the printer).
const fc = require('fast-check')
const util = require('node:util')

const MB = 1 << 20

class V {
  constructor(d, v) {
    this.d = d
    this.v = v
  }
  toString() {
    return this.d
  }
  [fc.toStringMethod]() {
    return this.d
  }
}

/** A value thrown by getters/traps of odd objects: recognisable, and not an Error. */
const GETTER_THROWS = Object.freeze({ thrownBy: 'a getter of a fuzz value' })

/** A short printable description of any value, never throwing, never long. */
function describe(v, max = 160) {
  let s
  try {
    if (typeof v === 'string') {
      s = v.length > 64 ? `<string length ${v.length}: ${JSON.stringify(v.slice(0, 24))}…>` : JSON.stringify(v)
    } else if (typeof v === 'bigint') s = `${v}n`
    else if (typeof v === 'symbol') s = v.toString()
    else if (typeof v === 'function') s = `<function ${v.name || 'anonymous'}>`
    else if (v instanceof V) s = v.d
    else s = util.inspect(v, { depth: 3, breakLength: Infinity, maxArrayLength: 8, maxStringLength: 40, customInspect: false, showProxy: true, getters: false, compact: true })
  } catch (e) {
    s = `<undescribable ${typeof v}>`
  }
  return s.length > max ? s.slice(0, max) + '…' : s
}

const wrap = (arb, label) => arb.map((v) => new V(label ? `${label}(${describe(v)})` : describe(v), v))

/** A labelled special value made fresh for every case (so cycles and getters are new). */
const special = (d, make) => ({ d, make })
const specials = (list) => fc.constantFrom(...list).map((s) => new V(s.d, s.make()))

// ---------------------------------------------------------------------------------------------
// Strings

const LONE = ['\uD800', '\uDBFF', '\uDC00', '\uDFFF']
/** One UTF-16 "unit" of a hostile string: ASCII, NUL, a lone surrogate, BMP, astral. */
const hostileUnit = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 1 }) },
  { weight: 2, arbitrary: fc.constant('\u0000') },
  { weight: 2, arbitrary: fc.constantFrom(...LONE) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.constantFrom('é', 'e\u0301', '\u2028', '\u202E', '€', '😀', '\uFEFF', '\uFFFF') },
)
const hostileString = fc.string({ unit: hostileUnit, maxLength: 40 })

const STRING_SPECIALS = [
  special('""', () => ''),
  special('" "', () => ' '),
  special('"\\0"', () => '\u0000'),
  special('"a\\0b"', () => 'a\u0000b'),
  special('lone high surrogate', () => '\uD800'),
  special('lone low surrogate', () => '\uDC00'),
  special('"a\\uD800b"', () => 'a\uD800b'),
  special('reversed pair "\\uDC00\\uD800"', () => '\uDC00\uD800'),
  special('astral "😀"', () => '😀'),
  special('255 chars', () => 'k'.repeat(255)),
  special('256 chars', () => 'k'.repeat(256)),
  special('1 MB ASCII', () => 'x'.repeat(MB)),
  special('1 MB of NUL', () => '\u0000'.repeat(MB)),
  special('1 MB of lone surrogates', () => '\uD800'.repeat(MB / 2)),
  special('1 MB of "€" (3 MB UTF-8)', () => '€'.repeat(MB)),
  special('"finished"', () => 'finished'),
  special('"started"', () => 'started'),
  special('SQL injection', () => "x'; DROP TABLE idempotency_key; --"),
  special('"$1"', () => '$1'),
  special('"__proto__"', () => '__proto__'),
  special('"constructor"', () => 'constructor'),
  special('"\\r\\n\\t"', () => '\r\n\t'),
  special('"NaN"', () => 'NaN'),
  special('"-0"', () => '-0'),
  special('"200"', () => '200'),
]

const anyString = fc.oneof(
  { weight: 3, arbitrary: wrap(hostileString) },
  { weight: 2, arbitrary: specials(STRING_SPECIALS) },
  { weight: 1, arbitrary: wrap(fc.string({ maxLength: 20 })) },
)

// ---------------------------------------------------------------------------------------------
// Non-string specials

function cyclicObject() {
  const o = { a: 1 }
  o.self = o
  return o
}
function cyclicArray() {
  const a = [1]
  a.push(a)
  return a
}
function deepArray(n) {
  let a = []
  for (let i = 0; i < n; i++) a = [a]
  return a
}
function deepObject(n) {
  let o = {}
  for (let i = 0; i < n; i++) o = { o }
  return o
}
function throwingGetter(name = 'boom', enumerable = true) {
  return Object.defineProperty({ ok: 1 }, name, {
    enumerable,
    get() {
      throw GETTER_THROWS
    },
  })
}
function throwingProxy(target = {}) {
  const h = {}
  for (const trap of ['get', 'set', 'has', 'ownKeys', 'getOwnPropertyDescriptor', 'getPrototypeOf', 'defineProperty', 'deleteProperty', 'apply', 'construct', 'isExtensible', 'preventExtensions', 'setPrototypeOf']) {
    h[trap] = () => {
      throw GETTER_THROWS
    }
  }
  return new Proxy(target, h)
}
function revokedProxy() {
  const { proxy, revoke } = Proxy.revocable({}, {})
  revoke()
  return proxy
}
function wideObject(n) {
  const o = {}
  for (let i = 0; i < n; i++) o[`k${i}`] = i
  return o
}
function throwingToJSON() {
  return {
    toJSON() {
      throw GETTER_THROWS
    },
  }
}
function throwingPrimitive() {
  const t = () => {
    throw GETTER_THROWS
  }
  return { toString: t, valueOf: t, [Symbol.toPrimitive]: t }
}
function symbolKeyed() {
  return { [Symbol('k')]: 1, visible: 2 }
}
function arrayWithThrowingIndex() {
  const a = [1, 2, 3]
  Object.defineProperty(a, 1, {
    enumerable: true,
    get() {
      throw GETTER_THROWS
    },
  })
  return a
}
function arrayWithThrowingLength() {
  // `length` of an Array cannot be a getter; a Proxy around an array can throw on it.
  return new Proxy([1, 2], {
    get(t, k) {
      if (k === 'length') throw GETTER_THROWS
      return t[k]
    },
  })
}

const SCALAR_SPECIALS = [
  special('undefined', () => undefined),
  special('null', () => null),
  special('true', () => true),
  special('false', () => false),
  special('0', () => 0),
  special('-0', () => -0),
  special('NaN', () => NaN),
  special('Infinity', () => Infinity),
  special('-Infinity', () => -Infinity),
  special('1.5', () => 1.5),
  special('-1', () => -1),
  special('2**31', () => 2 ** 31),
  special('2**32', () => 2 ** 32),
  special('2**53 + 2', () => 2 ** 53 + 2),
  special('Number.MAX_VALUE', () => Number.MAX_VALUE),
  special('Number.MIN_VALUE', () => Number.MIN_VALUE),
  special('0n', () => 0n),
  special('1n', () => 1n),
  special('-1n', () => -1n),
  special('2n**63n', () => 2n ** 63n),
  special('2n**64n', () => 2n ** 64n),
  special('-(2n**200n)', () => -(2n ** 200n)),
  special('Symbol("s")', () => Symbol('s')),
  special('Symbol.iterator', () => Symbol.iterator),
  special('arrow function', () => () => {}),
  special('async function', () => async () => {}),
  special('generator function', () => function* gen() {}),
  special('class', () => class K {}),
  special('native function Math.max', () => Math.max),
]

const OBJECT_SPECIALS = [
  special('{}', () => ({})),
  special('Object.create(null)', () => Object.create(null)),
  special('[]', () => []),
  special('[undefined]', () => [undefined]),
  special('sparse array new Array(5)', () => new Array(5)),
  special('nested [1,[2,[3]]]', () => [1, [2, [3]]]),
  special('array nested 1000 deep', () => deepArray(1000)),
  special('object nested 200 deep', () => deepObject(200)),
  special('cyclic object', cyclicObject),
  special('cyclic array', cyclicArray),
  special('{ cyclic inside: [cyclic] }', () => ({ inside: [cyclicObject()] })),
  special('object with a throwing getter', () => throwingGetter()),
  special('object with a throwing non-enumerable getter', () => throwingGetter('hidden', false)),
  special('Proxy whose every trap throws', () => throwingProxy()),
  special('Proxy(array) whose every trap throws', () => throwingProxy([])),
  special('revoked Proxy', revokedProxy),
  special('object whose toJSON throws', throwingToJSON),
  special('object whose toString/valueOf/toPrimitive throw', throwingPrimitive),
  special('object with a Symbol key', symbolKeyed),
  special('own "__proto__" key {"__proto__":{"x":1}}', () => JSON.parse('{"__proto__":{"x":1}}')),
  special('frozen object', () => Object.freeze({ a: 1 })),
  special('object holding a BigInt', () => ({ n: 5n })),
  special('array holding a BigInt', () => [1, 2n]),
  special('object holding a function and a Symbol', () => ({ f() {}, s: Symbol('x'), u: undefined, k: 1 })),
  special('new Date()', () => new Date()),
  special('invalid Date', () => new Date(NaN)),
  special('Date +275760', () => new Date(8.64e15)),
  special('Date -271821', () => new Date(-8.64e15)),
  special('Buffer "abc"', () => Buffer.from('abc')),
  special('empty Buffer', () => Buffer.alloc(0)),
  special('1 MB Buffer', () => Buffer.alloc(MB, 7)),
  special('Uint8Array [1,2]', () => new Uint8Array([1, 2])),
  special('Float64Array(2)', () => new Float64Array(2)),
  special('ArrayBuffer(8)', () => new ArrayBuffer(8)),
  special('DataView', () => new DataView(new ArrayBuffer(4))),
  special('Map', () => new Map([['a', 1]])),
  special('Set', () => new Set([1])),
  special('WeakMap', () => new WeakMap()),
  special('RegExp', () => /re/g),
  special('Error', () => new Error('an error as a value')),
  special('resolved Promise', () => Promise.resolve(1)),
  special('new String("s")', () => new String('s')),
  special('new Number(1)', () => new Number(1)),
  special('Object(1n)', () => Object(1n)),
  special('Object(Symbol())', () => Object(Symbol('boxed'))),
  special('object with 10k keys', () => wideObject(10000)),
  special('array of 100k numbers', () => Array.from({ length: 100000 }, (_, i) => i)),
  special('sparse array of length 1e5', () => new Array(1e5)),
  special('array with a throwing index getter', arrayWithThrowingIndex),
  special('Proxy(array) throwing on length', arrayWithThrowingLength),
  special('array of 1 MB strings', () => ['y'.repeat(MB), 'z']),
  special('object with 1 MB key', () => ({ ['k'.repeat(MB)]: 1 })),
  special('object with NUL and lone-surrogate keys', () => ({ 'a\u0000b': 1, '\uD800': 2 })),
]

/** A huge sparse array: length 2**32 - 1 with no elements (a few bytes in JS). */
const HUGE_SPARSE = special('sparse array of length 2**32-1', () => new Array(2 ** 32 - 1))
/** A sparse array of length 1e6. */
const BIG_SPARSE = special('sparse array of length 1e6', () => new Array(1e6))

const anythingArb = wrap(
  fc.anything({
    maxDepth: 3,
    maxKeys: 5,
    withBigInt: true,
    withBoxedValues: true,
    withMap: true,
    withSet: true,
    withNullPrototype: true,
    withObjectString: true,
    withSparseArray: true,
    withTypedArray: true,
    withDate: true,
    withUnicodeString: true,
  }),
)

const numberArb = fc.oneof(
  wrap(fc.double()),
  wrap(fc.integer()),
  wrap(fc.integer({ min: -(2 ** 31) - 5, max: 2 ** 31 + 5 })),
  wrap(fc.bigInt()),
)

/** Any odd value (every JS type, hostile strings, hostile objects). */
const odd = fc.oneof(
  { weight: 4, arbitrary: specials(SCALAR_SPECIALS) },
  { weight: 4, arbitrary: specials(OBJECT_SPECIALS) },
  { weight: 4, arbitrary: anyString },
  { weight: 2, arbitrary: numberArb },
  { weight: 2, arbitrary: anythingArb },
)

/** JSON data (what a well-behaved caller passes as params/bodies), with hostile strings. */
const jsonData = wrap(
  fc.jsonValue({ maxDepth: 3, depthSize: 'small' }).chain((j) =>
    fc.oneof(fc.constant(j), fc.dictionary(hostileString, fc.oneof(hostileString, fc.integer(), fc.double()), { maxKeys: 3 })),
  ),
)

module.exports = {
  fc,
  V,
  MB,
  GETTER_THROWS,
  describe,
  wrap,
  special,
  specials,
  hostileString,
  anyString,
  odd,
  jsonData,
  numberArb,
  STRING_SPECIALS,
  SCALAR_SPECIALS,
  OBJECT_SPECIALS,
  HUGE_SPARSE,
  BIG_SPARSE,
  throwingGetter,
  throwingProxy,
  cyclicObject,
}
