def self_test(): pass
class SelfTestReport: pass
